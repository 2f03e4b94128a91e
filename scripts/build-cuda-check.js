#!/usr/bin/env node
// Builds the CUDA plugin (native/cuda → build-cuda/libsparsekit_cuda.so) with
// nvcc and checks what can be checked without a GPU, so that CUDA code never
// rots on machines that have no GPU:
//
//   1. the plugin compiles for sm_80, sm_90 (+ compute_90 PTX) and sm_90a,
//      with ptxas's register / spill report in build-cuda/ptxas.log;
//   2. it exports only the sk_cuda_* interface and needs no CUDA library at
//      run time (the runtime is linked statically): only the driver, loaded
//      lazily by the runtime;
//   3. every tensor-core kernel contains its tensor-core instructions (HMMA,
//      sparse HMMA for 2:4, HGMMA for sm_90a) and no CUDA-core kernel any
//      (scripts/sass-scan.js --check);
//   4. the addon opens it (SPARSEKIT_CUDA_PLUGIN), its ABI version matches,
//      and it reports its state (no driver / no GPU here; available on a GPU
//      machine) instead of crashing.
//
// Where no nvcc is found it says so and exits 0, unless SPARSEKIT_REQUIRE_CUDA=1
// (CI) makes that an error. Options: --jobs N, --clean, --fast (portable
// kernels for sm_80 only, about half the compile time; the sm_90a kernels are
// still built).
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.join(__dirname, '..');
const buildDir = path.join(root, 'build-cuda');
const argv = process.argv.slice(2);
const jobsArg = argv.indexOf('--jobs');
const jobs = jobsArg >= 0 ? Number(argv[jobsArg + 1]) : Math.max(1, os.availableParallelism ? os.availableParallelism() : os.cpus().length);
const required = process.env.SPARSEKIT_REQUIRE_CUDA === '1';

function fail(msg) {
  console.error(`build-cuda-check: FAILED: ${msg}`);
  process.exit(1);
}
function run(cmd, args, opts = {}) {
  console.log(`> ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });
  if (r.error) throw r.error;
  return r.status === 0;
}
function capture(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', maxBuffer: 256 << 20, ...opts });
  return { ok: !r.error && r.status === 0, out: (r.stdout || '') + (r.stderr || ''), stdout: r.stdout || '' };
}
function has(cmd, args = ['--version']) {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return !r.error && r.status === 0;
}

/** nvcc as an absolute, resolved path (CMake caches the compiler: the same spelling every time). */
function findNvcc() {
  const inPath = (process.env.PATH || '').split(path.delimiter).filter(Boolean).map((d) => path.join(d, 'nvcc'));
  const cands = [process.env.CUDACXX, ...inPath, '/usr/local/cuda/bin/nvcc'].filter(Boolean);
  for (const c of cands) {
    if (!fs.existsSync(c) || !has(c)) continue;
    return fs.realpathSync(c);
  }
  return null;
}

// ptxas's report per kernel, kept across incremental builds: entries of the
// translation units rebuilt now replace their old ones, the others stay.
function mergePtxasLog(file, log) {
  const blocks = (text) => {
    const m = new Map();
    let key = null;
    for (const line of text.split('\n')) {
      const e = /^ptxas info\s+: (?:Compiling entry function|Function properties for) '?([^' ]+)'?(?: for '(\w+)')?/.exec(line);
      if (/Compiling entry function/.test(line) && e) {
        key = `${e[2]} ${e[1]}`;
        m.set(key, [line]);
      } else if (key && (/^ptxas info/.test(line) || /bytes stack frame/.test(line))) {
        m.get(key).push(line);
      } else {
        key = null;
      }
    }
    return m;
  };
  const merged = fs.existsSync(file) ? blocks(fs.readFileSync(file, 'utf8')) : new Map();
  for (const [k, v] of blocks(log)) merged.set(k, v);
  if (merged.size) fs.writeFileSync(file, [...merged.values()].map((b) => b.join('\n')).join('\n') + '\n');
}

const nvcc = findNvcc();
if (!nvcc) {
  const msg = 'nvcc not found (PATH, CUDACXX, /usr/local/cuda/bin): the CUDA plugin is not built here';
  if (required) fail(`${msg} (SPARSEKIT_REQUIRE_CUDA=1)`);
  console.log(`build-cuda-check: skipped: ${msg}`);
  process.exit(0);
}
if (!has('cmake')) fail('cmake is not installed');
console.log(capture(nvcc, ['--version']).out.trim().split('\n').pop());

// 1. Build (verbose ptxas, so registers and spills are on record).
if (argv.includes('--clean')) fs.rmSync(buildDir, { recursive: true, force: true });
const archs = argv.includes('--fast') ? '80-real' : '80-real;90-real;90-virtual';
const configure = ['-S', path.join(root, 'native', 'cuda'), '-B', buildDir, '-DSPARSEKIT_CUDA_VERBOSE=ON', `-DSPARSEKIT_CUDA_ARCHS=${archs}`];
if (!fs.existsSync(path.join(buildDir, 'CMakeCache.txt'))) {
  // First configure only: changing the compiler of an existing build dir makes CMake start over.
  configure.push(`-DCMAKE_CUDA_COMPILER=${nvcc}`);
  if (has('ninja')) configure.push('-G', 'Ninja');
}
if (!run('cmake', configure)) fail('cmake configure of build-cuda/');
const t0 = Date.now();
const build = spawnSync('cmake', ['--build', buildDir, '--parallel', String(jobs)], { cwd: root, encoding: 'utf8', maxBuffer: 512 << 20 });
const log = (build.stdout || '') + (build.stderr || '');
mergePtxasLog(path.join(buildDir, 'ptxas.log'), log);
if (build.status !== 0) {
  process.stdout.write(log.split('\n').filter((l) => !l.startsWith('ptxas info') && !/bytes stack frame/.test(l)).join('\n'));
  fail('nvcc build of the plugin');
}
const lib = path.join(buildDir, 'libsparsekit_cuda.so');
if (!fs.existsSync(lib)) fail(`${lib} was not built`);
console.log(`build-cuda-check: built ${lib} (${(fs.statSync(lib).size / 1e6).toFixed(1)} MB) in ${((Date.now() - t0) / 1000).toFixed(0)} s`);

// Spills are a performance bug worth seeing in CI output (not an error).
const spills = [];
let entry = '';
for (const line of fs.existsSync(path.join(buildDir, 'ptxas.log')) ? fs.readFileSync(path.join(buildDir, 'ptxas.log'), 'utf8').split('\n') : []) {
  const e = /Compiling entry function '([^']+)' for '(\w+)'/.exec(line);
  if (e) entry = `${e[2]} ${e[1]}`;
  const s = /(\d+) bytes spill stores, (\d+) bytes spill loads/.exec(line);
  if (s && (Number(s[1]) > 0 || Number(s[2]) > 0)) spills.push(`${entry}: ${s[0]}`);
}
if (spills.length) console.log(`build-cuda-check: ${spills.length} kernel(s) spill registers:\n  ${spills.join('\n  ')}`);

// 2. Exports and run-time dependencies.
if (has('nm', ['--version'])) {
  const syms = capture('nm', ['-D', '--defined-only', lib]).stdout.split('\n').map((l) => l.trim().split(/\s+/).pop()).filter(Boolean);
  const foreign = syms.filter((s) => !s.startsWith('sk_cuda_'));
  if (foreign.length) fail(`the plugin exports more than its interface: ${foreign.slice(0, 10).join(', ')}`);
  const header = fs.readFileSync(path.join(root, 'native', 'cuda', 'sparsekit_cuda.h'), 'utf8');
  const declared = [...header.matchAll(/SK_CUDA_API [^;]*?\b(sk_cuda_\w+)\(/g)].map((m) => m[1]);
  const missing = declared.filter((d) => !syms.includes(d));
  if (missing.length) fail(`the plugin does not export ${missing.join(', ')}`);
  console.log(`build-cuda-check: exports exactly the ${declared.length} functions of sparsekit_cuda.h`);
}
if (has('ldd', ['--version'])) {
  const deps = capture('ldd', [lib]).stdout;
  if (/libcudart|libcublas|libcuda\.so/.test(deps)) fail(`the plugin links CUDA libraries dynamically:\n${deps}`);
  console.log('build-cuda-check: no CUDA library among its dynamic dependencies (static runtime; libcuda is opened by the runtime)');
}

// 3. Tensor-core instructions where they belong.
{
  const r = capture(process.execPath, [path.join(__dirname, 'sass-scan.js'), lib, '--check']);
  const lines = r.out.trim().split('\n');
  console.log(lines[0]);
  console.log(lines[lines.length - 1]);
  if (!r.ok) fail(`machine-code check:\n${lines.filter((l) => /problem|  \S/.test(l)).join('\n')}`);
}

// 4. The addon loads it and reports its state.
const addonBuilt = fs.existsSync(path.join(root, 'build', 'Release', 'sparsekit.node')) || fs.existsSync(path.join(root, 'prebuilds'));
if (!addonBuilt) {
  console.log('build-cuda-check: the addon is not built (npm run build:native): load check skipped');
} else {
  const script = `
    const { info } = require(${JSON.stringify(path.join(root, 'lib', 'index.ts'))});
    const c = info().backends.cuda;
    console.log(JSON.stringify(c));`;
  const r = capture(process.execPath, ['--import', 'tsx', '-e', script], { env: { ...process.env, SPARSEKIT_CUDA_PLUGIN: lib } });
  if (!r.ok) fail(`loading the plugin through the addon crashed or threw:\n${r.out}`);
  const c = JSON.parse(r.stdout.trim().split('\n').pop());
  if (c.pluginAbi !== c.abi) fail(`ABI mismatch: plugin ${c.pluginAbi}, addon ${c.abi}`);
  const ok = ['no-driver', 'no-gpu', 'unsupported-gpu', 'available'];
  if (!ok.includes(c.status)) fail(`unexpected backend state ${c.status}: ${c.reason}`);
  console.log(`build-cuda-check: the addon loads it (ABI ${c.abi}): ${c.status}: ${c.reason}`);
}
console.log('build-cuda-check: ok');
