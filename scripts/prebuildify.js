#!/usr/bin/env node
// Makes the prebuilt binary that ships inside the package:
//   prebuilds/<platform>-<arch>/sparsekit.napi.node
// (the directory and file name node-gyp-build looks for: the `napi` tag means
// "any Node-API runtime", so one file serves every Node version, Bun and Deno).
//
// It builds with cmake-js into build/ (the build every npm script uses; an
// incremental no-op when nothing changed), copies build/Release/sparsekit.node
// and strips it. The `prebuildify` package is not used: it only drives
// node-gyp, and the CMake build is the one the project ships.
//
// Options: --no-build  reuse build/Release/sparsekit.node as it is
//          --no-strip  keep symbols
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const args = new Set(process.argv.slice(2));
const built = path.join(root, 'build', 'Release', 'sparsekit.node');
const tuple = `${process.platform}-${process.arch}`;
const outDir = path.join(root, 'prebuilds', tuple);
const outFile = path.join(outDir, 'sparsekit.napi.node');

function run(cmd, argv) {
  console.log(`> ${cmd} ${argv.join(' ')}`);
  const r = spawnSync(cmd, argv, { cwd: root, stdio: 'inherit' });
  if (r.error) throw r.error;
  if (r.status !== 0) {
    console.error(`prebuildify: ${path.basename(cmd)} exited with ${r.status}`);
    process.exit(1);
  }
}

if (!args.has('--no-build')) {
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
  run(process.execPath, [cmakeJs, 'compile', '--out', 'build']);
}
if (!fs.existsSync(built)) {
  console.error(`prebuildify: ${path.relative(root, built)} does not exist (build it with npm run build:native)`);
  process.exit(1);
}

fs.rmSync(outDir, { recursive: true, force: true });
fs.mkdirSync(outDir, { recursive: true });
fs.copyFileSync(built, outFile);

if (!args.has('--no-strip') && process.platform !== 'win32') {
  // Drop symbols a loader does not need; the exported napi_register_module_v1
  // stays (it is in the dynamic symbol table, which strip keeps).
  const stripArgs = process.platform === 'darwin' ? ['-x', outFile] : ['--strip-unneeded', outFile];
  const r = spawnSync('strip', stripArgs, { stdio: 'inherit' });
  if (r.error || r.status !== 0) console.warn('prebuildify: strip is not available or failed; the prebuild keeps its symbols');
}

// The file must load on its own, from a process that has nothing else loaded.
const check = spawnSync(
  process.execPath,
  ['-e', 'const b = require(process.argv[1]); const i = b.info(); console.log(i.version + " " + i.isa + " (compiled: " + i.compiledIsas.join(", ") + ")")', outFile],
  { encoding: 'utf8' },
);
if (check.status !== 0) {
  console.error(`prebuildify: ${path.relative(root, outFile)} does not load:\n${check.stderr}`);
  process.exit(1);
}
const kib = Math.round(fs.statSync(outFile).size / 1024);
console.log(`prebuildify: wrote ${path.relative(root, outFile)} (${kib} KiB): sparsekit ${check.stdout.trim()}`);
