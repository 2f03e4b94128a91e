#!/usr/bin/env node
// Builds the addon from source. Used by `npm install` in a clone (and by the
// install script where no prebuilt binary matches): cmake-js when it and cmake
// are available (the build the npm scripts use), node-gyp otherwise.
'use strict';
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const root = path.join(__dirname, '..');
function run(cmd, args) {
  console.log(`> ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', shell: process.platform === 'win32' });
  return r.status === 0;
}
function has(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'ignore' });
  return r.status === 0;
}

let cmakeJs = null;
try {
  cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
} catch {}
const extra = process.env.SPARSEKIT_CUDA === '1' ? ['--', '-DSPARSEKIT_CUDA=ON'] : [];
if (cmakeJs && has('cmake', ['--version'])) {
  process.exit(run(process.execPath, [cmakeJs, 'compile', '--out', 'build', ...extra]) ? 0 : 1);
}
const gyp = process.env.npm_config_node_gyp;
const ok = gyp ? run(process.execPath, [gyp, 'rebuild']) : run('node-gyp', ['rebuild']);
process.exit(ok ? 0 : 1);
