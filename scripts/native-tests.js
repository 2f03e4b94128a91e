#!/usr/bin/env node
// `npm run test:native`: the checks of the C++ core that `npm test` cannot do.
//
// 1. The core tests (native/tests, ctest) in a separate Debug build under
//    AddressSanitizer + UBSan: build-asan/ (plain cmake, not cmake-js, so it
//    never touches build/, the addon's build).
// 2. The arm64 variant compiles: every core and arm64_neon source listed in
//    native/sources.json, cross-compiled with aarch64-linux-gnu-g++ (Debian's
//    g++-aarch64-linux-gnu). The objects cannot run here; this proves the NEON
//    kernels build. Skipped with a message when the cross compiler is missing,
//    unless SPARSEKIT_REQUIRE_CROSS=1 (set by .ci/run) makes that an error.
// 3. Where qemu-user is installed (qemu-aarch64; .ci/run installs it), the
//    core and N:M tests are linked statically for arm64 and run under
//    emulation, so the NEON kernels are checked against the reference, not
//    only compiled.
//
// Options: --skip-asan, --skip-cross
'use strict';
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.join(__dirname, '..');
const args = new Set(process.argv.slice(2));
const jobs = Math.max(1, os.availableParallelism ? os.availableParallelism() : os.cpus().length);

function run(cmd, argv, opts = {}) {
  console.log(`> ${cmd} ${argv.join(' ')}`);
  const r = spawnSync(cmd, argv, { cwd: root, stdio: 'inherit', ...opts });
  if (r.error && r.error.code === 'ETIMEDOUT') {
    console.error(`test:native: ${path.basename(cmd)} ran past ${opts.timeout / 1000} s (a hang?) and was killed`);
    return false;
  }
  if (r.error) throw r.error;
  return r.status === 0;
}
function has(cmd, argv = ['--version']) {
  const r = spawnSync(cmd, argv, { stdio: 'ignore' });
  return !r.error && r.status === 0;
}
function fail(msg) {
  console.error(`test:native: FAILED: ${msg}`);
  process.exit(1);
}

function asanTests() {
  if (!has('cmake')) fail('cmake is not installed');
  const dir = path.join(root, 'build-asan');
  const configure = ['-S', root, '-B', dir, '-DSPARSEKIT_TESTS=ON', '-DSPARSEKIT_SANITIZE=ON', '-DCMAKE_BUILD_TYPE=Debug'];
  // Ninja when it is there (faster no-op rebuilds); a build dir keeps the
  // generator it was configured with.
  if (!fs.existsSync(path.join(dir, 'CMakeCache.txt')) && has('ninja')) configure.push('-G', 'Ninja');
  if (!run('cmake', configure)) fail('cmake configure of build-asan/');
  if (!run('cmake', ['--build', dir, '--parallel', String(jobs)])) fail('build of build-asan/');
  const env = {
    ...process.env,
    ASAN_OPTIONS: process.env.ASAN_OPTIONS || 'abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1',
    UBSAN_OPTIONS: process.env.UBSAN_OPTIONS || 'print_stacktrace=1:halt_on_error=1',
  };
  if (!run('ctest', ['--test-dir', dir, '--output-on-failure', '--timeout', '300'], { env })) fail('ctest under AddressSanitizer + UBSan');
  console.log('test:native: core tests passed under AddressSanitizer + UBSan');
}

// ELF e_machine of an object file (183 = AArch64).
function elfMachine(file) {
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(20);
  fs.readSync(fd, buf, 0, 20, 0);
  fs.closeSync(fd);
  if (buf.readUInt32BE(0) !== 0x7f454c46) return -1;
  return buf[5] === 2 ? buf.readUInt16BE(18) : buf.readUInt16LE(18);
}

async function crossCompileArm64() {
  const cxx = process.env.SPARSEKIT_AARCH64_CXX || 'aarch64-linux-gnu-g++';
  if (!has(cxx)) {
    const msg = `${cxx} not found (apt-get install g++-aarch64-linux-gnu); the arm64 NEON sources were NOT compiled`;
    if (process.env.SPARSEKIT_REQUIRE_CROSS === '1') fail(msg);
    console.log(`test:native: SKIPPED arm64 cross-compile: ${msg}`);
    return;
  }
  const sources = JSON.parse(fs.readFileSync(path.join(root, 'native', 'sources.json'), 'utf8'));
  const files = [...sources.core, ...sources.arm64_neon];
  if (sources.arm64_neon.length === 0) fail('native/sources.json lists no arm64_neon sources');
  const outDir = path.join(root, 'build-asan', 'aarch64');
  fs.mkdirSync(outDir, { recursive: true });
  console.log(`test:native: cross-compiling ${files.length} sources for arm64 with ${cxx}`);

  const failed = [];
  const queue = files.slice();
  async function worker() {
    for (let src = queue.shift(); src !== undefined; src = queue.shift()) {
      const obj = path.join(outDir, src.replace(/[\\/]/g, '_').replace(/\.[^.]+$/, '.o'));
      const argv = ['-std=c++17', '-O2', '-Wall', '-Wextra', '-Wno-unused-parameter', `-I${path.join(root, 'native', 'include')}`, '-c', path.join(root, src), '-o', obj];
      const code = await new Promise((resolve) => {
        const p = spawn(cxx, argv, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
        p.on('error', () => resolve(-1));
        p.on('close', resolve);
      });
      if (code !== 0) {
        failed.push(src);
        console.log(`  FAIL ${src}`);
      } else if (elfMachine(obj) !== 183) {
        failed.push(src);
        console.log(`  FAIL ${src}: ${path.relative(root, obj)} is not an AArch64 object`);
      } else {
        console.log(`  ok   ${src}`);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(jobs, files.length) }, worker));
  if (failed.length) fail(`arm64 cross-compile of ${failed.join(', ')}`);
  console.log(`test:native: arm64 cross-compile passed (${files.length} objects in ${path.relative(root, outDir)}/)`);

  // 3. Run the core tests on emulated arm64.
  const qemu = process.env.SPARSEKIT_QEMU_AARCH64 || 'qemu-aarch64';
  if (!has(qemu, ['-version'])) {
    const msg = `${qemu} not found (apt-get install qemu-user); the NEON kernels were compiled but not run`;
    if (process.env.SPARSEKIT_REQUIRE_CROSS === '1') fail(msg);
    console.log(`test:native: SKIPPED arm64 core tests: ${msg}`);
    return;
  }
  const objs = files.map((src) => path.join(outDir, src.replace(/[\\/]/g, '_').replace(/\.[^.]+$/, '.o')));
  // core_tests (dense, block-sparse, routing) and nm_tests (N:M): each checks
  // every ISA the CPU runs, here scalar and NEON.
  for (const test of ['core_tests', 'nm_tests']) {
    const exe = path.join(outDir, test);
    const link = ['-std=c++17', '-O2', `-I${path.join(root, 'native', 'include')}`, '-static', '-pthread',
      path.join(root, 'native', 'tests', `${test}.cc`), ...objs, '-o', exe];
    if (!run(cxx, link)) fail(`linking ${test} for arm64`);
    // Seconds to a few minutes here; a deadlock must fail CI, not stall it
    // (qemu's timing exposed a thread-pool race that native x86 runs did not).
    if (!run(qemu, [exe], { timeout: 600_000 })) fail(`${test} on arm64 (qemu)`);
  }
  console.log('test:native: core and N:M tests passed on arm64 under qemu (NEON kernels)');
}

(async () => {
  const t0 = Date.now();
  if (!args.has('--skip-asan')) asanTests();
  if (!args.has('--skip-cross')) await crossCompileArm64();
  console.log(`test:native: done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
})().catch((e) => fail(e.stack || String(e)));
