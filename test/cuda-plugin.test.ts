/**
 * How the addon finds and opens the CUDA plugin, on any machine (no GPU
 * needed): each case runs in a child process with SPARSEKIT_CUDA_PLUGIN set,
 * since the plugin is loaded once per process.
 *
 *  - no plugin / disabled: the backend is unavailable with the reason, the CPU
 *    ops work, and cuda.* throws that reason;
 *  - broken plugins (wrong ABI version, missing functions, not a plugin, not
 *    a library), compiled here from a few lines of C: named states, no crash;
 *  - the real plugin as built by scripts/build-cuda-check.js: its ABI matches
 *    and it reports no driver / no GPU (here) or the device (on a GPU machine);
 *  - the host-memory stand-in of the plugin (test/fixtures/cuda_host_plugin.cc):
 *    test/cuda.test.ts runs against it, exercising the bindings and the
 *    TypeScript layer end to end.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';

const root = path.join(__dirname, '..');
const libIndex = path.join(root, 'lib', 'index.ts');
const header = path.join(root, 'native', 'cuda');

interface ChildResult {
  cuda: { available: boolean; status: string; reason: string; abi: number; pluginAbi?: number; plugin?: string; device?: { name: string } };
  linearOk: boolean;
  thrown: string | null;
  thrownName: string | null;
}

/** info().backends.cuda, a CPU linear and a cuda.toDevice in a fresh process with SPARSEKIT_CUDA_PLUGIN = plugin. */
function probe(plugin: string | undefined): ChildResult {
  const script = `
    const sk = require(${JSON.stringify(libIndex)});
    const cuda = sk.info().backends.cuda;
    const y = sk.linear({ data: new Float32Array([1, 2, 3, 4, 5, 6]), shape: [2, 3] },
                        { data: new Float32Array([1, 0, -1, 0.5, 0.5, 0.5]), shape: [2, 3] }, { bias: new Float32Array([1, -1]) });
    const linearOk = Array.from(y.data).join() === '-1,2,-1,6.5';
    let thrown = null, thrownName = null;
    try { sk.cuda.toDevice({ data: new Float32Array(4), shape: [4] }).dispose(); } catch (e) { thrown = e.message; thrownName = e.name; }
    process.stdout.write(JSON.stringify({ cuda, linearOk, thrown, thrownName }));`;
  const env = { ...process.env };
  delete env.SPARSEKIT_CUDA_PLUGIN;
  if (plugin !== undefined) env.SPARSEKIT_CUDA_PLUGIN = plugin;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], { cwd: root, env, encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, `child process failed (SPARSEKIT_CUDA_PLUGIN=${plugin}): signal ${r.signal}\n${r.stderr}`);
  return JSON.parse(r.stdout) as ChildResult;
}

function assertUnavailable(r: ChildResult, status: string, reason: RegExp) {
  assert.equal(r.cuda.available, false);
  assert.equal(r.cuda.status, status);
  assert.match(r.cuda.reason, reason);
  assert.ok(r.linearOk, 'the CPU linear still works');
  assert.equal(r.thrownName, 'CudaUnavailableError');
  assert.ok(r.thrown?.endsWith(r.cuda.reason), `cuda.toDevice throws the backend's reason: ${r.thrown}`);
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sparsekit-cuda-plugin-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

function hasCompiler(): string | null {
  for (const cxx of [process.env.CXX, 'c++', 'g++', 'clang++'].filter(Boolean) as string[]) {
    const r = spawnSync(cxx, ['--version'], { stdio: 'ignore' });
    if (!r.error && r.status === 0) return cxx;
  }
  return null;
}
const cxx = hasCompiler();

/** Compiles C++ source into a shared library in tmp. */
function compile(name: string, source: string | null, file?: string): string {
  const out = path.join(tmp, `${name}.so`);
  let src = file;
  if (source !== null) {
    src = path.join(tmp, `${name}.cc`);
    fs.writeFileSync(src, source);
  }
  const r = spawnSync(cxx!, ['-std=c++17', '-O1', '-shared', '-fPIC', `-I${header}`, '-o', out, src!], { encoding: 'utf8' });
  assert.equal(r.status, 0, `compiling ${name}: ${r.stderr}`);
  return out;
}

test('cuda plugin: missing plugin → no-plugin, with the reason; CPU ops work; cuda.* throws the reason', () => {
  const r = probe(path.join(tmp, 'no-such-dir', 'libsparsekit_cuda.so'));
  assertUnavailable(r, 'no-plugin', /no CUDA plugin: SPARSEKIT_CUDA_PLUGIN=.*no-such-dir.* is not a file/);
});

test('cuda plugin: the default search looks next to the addon and in prebuilds/<platform>-<arch>/', (t) => {
  const r = probe(undefined);
  if (r.cuda.status !== 'no-plugin') {
    t.skip(`a plugin was found in the default places (${r.cuda.plugin}): ${r.cuda.status}`);
    return;
  }
  assertUnavailable(r, 'no-plugin', /no CUDA plugin found \(looked for .*libsparsekit_cuda\.so.*prebuilds\/[a-z0-9]+-[a-z0-9]+\/libsparsekit_cuda\.so\); build it with `npm run build:cuda`/);
});

test('cuda plugin: SPARSEKIT_CUDA_PLUGIN=off disables the backend', () => {
  assertUnavailable(probe('off'), 'disabled', /disabled by SPARSEKIT_CUDA_PLUGIN=off/);
});

test('cuda plugin: a file that is not a library → load-error with dlopen\'s message', () => {
  const junk = path.join(tmp, 'junk.so');
  fs.writeFileSync(junk, 'not an ELF file');
  assertUnavailable(probe(junk), 'load-error', /could not be loaded: .*junk\.so/);
});

test('cuda plugin: broken plugins are named states, never crashes (wrong ABI, missing functions, not a plugin)', (t) => {
  if (!cxx) {
    t.skip('no C++ compiler to build the broken test plugins');
    return;
  }
  const wrongAbi = compile('wrong_abi', 'extern "C" int sk_cuda_abi_version(void) { return 999; }\n');
  const r1 = probe(wrongAbi);
  assertUnavailable(r1, 'abi-mismatch', /has ABI version 999 but this addon needs version \d+: rebuild the plugin/);
  assert.equal(r1.cuda.pluginAbi, 999);

  const partial = compile('partial', '#include "sparsekit_cuda.h"\nextern "C" SK_CUDA_API int sk_cuda_abi_version(void) { return SK_CUDA_ABI_VERSION; }\n');
  assertUnavailable(probe(partial), 'load-error', /lacks functions of ABI version \d+: sk_cuda_query, sk_cuda_last_error/);

  const notPlugin = compile('not_plugin', 'extern "C" int something_else(void) { return 1; }\n');
  assertUnavailable(probe(notPlugin), 'load-error', /is not a sparsekit plugin \(no sk_cuda_abi_version\)/);
});

test('cuda plugin: the plugin built by scripts/build-cuda-check.js loads, its ABI matches, and it reports its state', (t) => {
  const candidates = [path.join(root, 'build-cuda', 'libsparsekit_cuda.so'), path.join(root, 'build', 'Release', 'libsparsekit_cuda.so')];
  const lib = candidates.find((p) => fs.existsSync(p));
  if (!lib) {
    t.skip('the CUDA plugin is not built here (node scripts/build-cuda-check.js builds it where nvcc exists)');
    return;
  }
  const r = probe(lib);
  assert.equal(r.cuda.pluginAbi, r.cuda.abi, 'plugin and addon ABI versions');
  assert.ok(['no-driver', 'no-gpu', 'unsupported-gpu', 'available'].includes(r.cuda.status), `state ${r.cuda.status}: ${r.cuda.reason}`);
  assert.ok(r.linearOk, 'the CPU linear still works');
  if (r.cuda.available) {
    assert.equal(r.thrown, null, 'cuda.toDevice works where the backend is available');
  } else {
    assertUnavailable(r, r.cuda.status, /\S/);
    if (r.cuda.status === 'no-driver') assert.match(r.cuda.reason, /libcuda\.so\.1|driver/);
  }
});

test('cuda plugin: device tensors that are never disposed are freed by the garbage collector (FinalizationRegistry)', (t) => {
  if (!cxx) {
    t.skip('no C++ compiler to build the host stand-in of the plugin');
    return;
  }
  const lib = compile('host_plugin_gc', null, path.join(root, 'test', 'fixtures', 'cuda_host_plugin.cc'));
  const script = `
    const { cuda } = require(${JSON.stringify(libIndex)});
    (function leak() {
      for (let i = 0; i < 50; i++) cuda.toDevice({ data: new Float32Array(1000), shape: [1000] });
    })();
    const kept = cuda.toDevice({ data: new Float32Array(10), shape: [10] });
    const before = cuda.memoryStats();
    (async () => {
      for (let i = 0; i < 20 && cuda.memoryStats().liveTensors > 1; i++) {
        global.gc();
        await new Promise((r) => setTimeout(r, 20));
      }
      const after = cuda.memoryStats();
      process.stdout.write(JSON.stringify({ before, after, keptAlive: !kept.disposed }));
    })();`;
  const env: NodeJS.ProcessEnv = { ...process.env, SPARSEKIT_CUDA_PLUGIN: lib };
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', '-e', script], { cwd: root, env, encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  const o = JSON.parse(r.stdout);
  assert.equal(o.before.liveTensors, 51);
  assert.equal(o.after.liveTensors, 1, `the 50 unreachable tensors were freed (${JSON.stringify(o)})`);
  assert.equal(o.after.finalizedUndisposed, 50);
  assert.equal(o.after.liveBytes, 40);
  assert.ok(o.keptAlive);
});

test('cuda plugin: test/cuda.test.ts passes against the host-memory stand-in of the plugin (bindings and TS layer)', (t) => {
  if (process.env.SPARSEKIT_SKIP_STANDIN === '1') {
    t.skip('SPARSEKIT_SKIP_STANDIN=1 (bench/gpu-check.sh: test/cuda.test.ts ran on the GPU itself)');
    return;
  }
  if (!cxx) {
    t.skip('no C++ compiler to build the host stand-in of the plugin');
    return;
  }
  const lib = compile('host_plugin', null, path.join(root, 'test', 'fixtures', 'cuda_host_plugin.cc'));
  const env: NodeJS.ProcessEnv = { ...process.env, SPARSEKIT_CUDA_PLUGIN: lib };
  delete env.NODE_TEST_CONTEXT; // a nested test run, not a child of this one
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-reporter=tap', path.join(root, 'test', 'cuda.test.ts')], {
    cwd: root,
    env,
    encoding: 'utf8',
    timeout: 600_000,
    maxBuffer: 64 << 20,
  });
  const out = r.stdout + r.stderr;
  assert.equal(r.status, 0, `test/cuda.test.ts against the host stand-in failed:\n${out.slice(-6000)}`);
  const pass = Number(/^# pass (\d+)/m.exec(out)?.[1] ?? 0);
  const skipped = Number(/^# skipped (\d+)/m.exec(out)?.[1] ?? -1);
  assert.ok(pass >= 15, `expected the CUDA op tests to run against the stand-in, ${pass} passed:\n${out.slice(-3000)}`);
  // Skipped there: the three sm_90-only tests and the no-backend test (the stand-in is available).
  assert.ok(skipped <= 4, `${skipped} tests skipped against the stand-in:\n${out.slice(-3000)}`);
  assert.match(out, /host emulation/, 'the device name says it is not a GPU');
});
