/**
 * The package as a user gets it: `npm pack`, install the tarball into an
 * empty project with install scripts blocked, and load it from CommonJS and
 * ESM under Node, Bun and Deno. Nothing may be compiled at install: the
 * prebuilt binary in prebuilds/<platform>-<arch>/ is what loads.
 */
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const root = path.join(__dirname, '..');
const tuple = `${process.platform}-${process.arch}`;
const prebuildRel = `prebuilds/${tuple}/sparsekit.napi.node`;

// The outer `npm test` exports npm_* variables (npm_config_*, the lifecycle,
// the package); none of them may leak into the nested npm commands, which
// must behave as in a user's shell.
const cleanEnv: NodeJS.ProcessEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k) && k !== 'INIT_CWD'),
);
cleanEnv.NO_COLOR = '1';
cleanEnv.DENO_NO_UPDATE_CHECK = '1';

interface Ran {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], opts: SpawnSyncOptions = {}): Ran {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: cleanEnv, timeout: 120_000, ...opts });
  if (r.error) throw r.error;
  return { status: r.status, stdout: String(r.stdout), stderr: String(r.stderr) };
}

function mustRun(cmd: string, args: string[], opts: SpawnSyncOptions = {}): Ran {
  const r = run(cmd, args, opts);
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')} exited with ${r.status}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
  return r;
}

// The smoke script a user could write: ESM `import`, CommonJS `require` (the
// package's "require" export, through createRequire), sync, packed and async
// linear against a float64 reference, and which binary node-gyp-build picked.
const SMOKE_MJS = `
import { createRequire } from 'node:module';
import * as path from 'node:path';
import * as esm from 'sparsekit';
const require = createRequire(import.meta.url);
const cjs = require('sparsekit');
const runtime = typeof Bun !== 'undefined' ? 'bun ' + Bun.version
  : typeof Deno !== 'undefined' ? 'deno ' + Deno.version.deno : 'node ' + process.versions.node;

const T = 3, IN = 5, OUT = 4;
const x = new Float32Array(T * IN).map((_, i) => ((i * 7) % 11) / 4 - 1);
const w = new Float32Array(OUT * IN).map((_, i) => ((i * 5) % 13) / 6 - 1);
const bias = new Float32Array([0.5, -0.25, 0, 1]);
const want = [];
for (let t = 0; t < T; t++) for (let o = 0; o < OUT; o++) {
  let s = bias[o];
  for (let k = 0; k < IN; k++) s += x[t * IN + k] * w[o * IN + k];
  want.push(Math.max(0, s));
}
function check(label, y) {
  if (!y || !(y.data instanceof Float32Array) || y.shape.join() !== [T, OUT].join()) {
    throw new Error(label + ': expected a Float32Array tensor of shape [' + T + ', ' + OUT + '], got ' + JSON.stringify(y && y.shape));
  }
  y.data.forEach((v, i) => {
    if (Math.abs(v - want[i]) > 1e-5 * (1 + Math.abs(want[i]))) throw new Error(label + ': y[' + i + '] = ' + v + ', expected ' + want[i]);
  });
}
const X = { data: x, shape: [T, IN] };
const W = { data: w, shape: [OUT, IN] };
const opts = { bias, activation: 'relu' };
check('esm linear', esm.linear(X, W, opts));
check('cjs linear', cjs.linear(X, W, opts));
check('prepackLinear', cjs.linear(X, cjs.prepackLinear(W), opts));
check('linearAsync', await esm.linearAsync(X, W, opts));
if (esm.linear !== cjs.linear) throw new Error('import and require gave two instances of the module');
const pkgDir = path.dirname(require.resolve('sparsekit/package.json'));
const binary = path.relative(pkgDir, require('node-gyp-build').path(pkgDir)).split(path.sep).join('/');
const info = esm.info();
console.log('isa ' + info.isa);
console.log(JSON.stringify({ runtime, ok: true, isa: info.isa, version: info.version, binary }));
`;

// A plain CommonJS program (no ESM anywhere in the entry).
const SMOKE_CJS = `
const sk = require('sparsekit');
const y = sk.linear({ data: new Float32Array([1, 2, 3, 4, 5, 6]), shape: [2, 3] },
                    { data: new Float32Array([1, 0, -1, 0.5, 0.5, 0.5]), shape: [2, 3] },
                    { bias: new Float32Array([1, -1]) });
const want = [-1, 2, -1, 6.5];
if (y.shape.join() !== '2,2' || want.some((v, i) => y.data[i] !== v)) throw new Error('cjs: got ' + Array.from(y.data));
console.log(JSON.stringify({ ok: true, isa: sk.info().isa }));
`;

let tmp = '';
let project = '';
let packedFiles: string[] = [];

function lastJson(out: string): Record<string, unknown> {
  const line = out.trim().split('\n').filter((l) => l.startsWith('{')).pop();
  assert.ok(line, `no JSON line in output:\n${out}`);
  return JSON.parse(line);
}

function pkgBin(name: string): string {
  return path.join(root, 'node_modules', '.bin', name);
}

/**
 * Bun's npm package puts a placeholder at node_modules/.bin/bun that its
 * postinstall replaces with the real binary; npm 11 blocks dependencies'
 * install scripts unless package.json `allowScripts` lets bun's run. Where it
 * did not run, use the binary from the platform package, which is what the
 * postinstall would have linked.
 */
function bunBin(): string {
  const viaBin = pkgBin('bun');
  if (run(viaBin, ['--version']).status === 0) return viaBin;
  const plat = process.platform === 'win32' ? 'windows' : process.platform;
  const arch = process.arch === 'arm64' ? 'aarch64' : process.arch;
  const direct = path.join(root, 'node_modules', '@oven', `bun-${plat}-${arch}`, 'bin', 'bun');
  assert.ok(fs.existsSync(direct), `bun is not installed (devDependency "bun"): neither ${viaBin} runs nor ${direct} exists`);
  return direct;
}

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sparsekit-pack-'));

  // Build (incremental: a no-op when build/ is current) and copy the prebuild.
  mustRun(process.execPath, [path.join(root, 'scripts', 'prebuildify.js')], { cwd: root });
  assert.ok(fs.existsSync(path.join(root, prebuildRel)), `${prebuildRel} was not written`);

  // npm pack runs `prepare` (the TypeScript build) like a publish does.
  const packed = mustRun('npm', ['pack', '--json', '--pack-destination', tmp], { cwd: root });
  const start = packed.stdout.search(/^\[/m);
  assert.ok(start >= 0, `npm pack printed no JSON:\n${packed.stdout}`);
  const json = packed.stdout.slice(start);
  const [meta] = JSON.parse(json) as Array<{ filename: string; files: Array<{ path: string }> }>;
  packedFiles = meta.files.map((f) => f.path);
  const tarball = path.join(tmp, meta.filename);
  assert.ok(fs.existsSync(tarball), `npm pack did not write ${tarball}`);

  project = path.join(tmp, 'consumer');
  fs.mkdirSync(project);
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }, null, 2));
  // npm 11 blocks dependencies' install scripts by default; --ignore-scripts
  // makes sure no script runs whatever the npm version or its config.
  mustRun('npm', ['install', '--ignore-scripts', '--no-audit', '--no-fund', tarball], { cwd: project });
  fs.writeFileSync(path.join(project, 'smoke.mjs'), SMOKE_MJS);
  fs.writeFileSync(path.join(project, 'smoke.cjs'), SMOKE_CJS);
});

after(() => {
  if (tmp && !process.env.SPARSEKIT_KEEP_TMP) fs.rmSync(tmp, { recursive: true, force: true });
});

test('the tarball holds the prebuild, the compiled API, its types and the source build', () => {
  // binding.gyp, the sources and scripts/build-addon.js are the install
  // script's fallback where no prebuild matches the platform.
  const needed = [prebuildRel, 'dist/index.js', 'dist/index.mjs', 'dist/index.d.ts', 'package.json', 'README.md',
    'binding.gyp', 'native/sources.json', 'scripts/build-addon.js'];
  for (const f of needed) {
    assert.ok(packedFiles.includes(f), `${f} is missing from the tarball`);
  }
  assert.ok(!packedFiles.some((f) => f.startsWith('build/')), 'the tarball must not ship build/');
  assert.ok(!packedFiles.some((f) => f.startsWith('test/') || f.startsWith('bench/')), 'tests and benchmarks stay out of the tarball');
});

test('installed with scripts blocked, nothing was built: no build/ in node_modules/sparsekit', () => {
  const pkg = path.join(project, 'node_modules', 'sparsekit');
  assert.ok(fs.existsSync(path.join(pkg, 'package.json')), 'sparsekit is not installed');
  assert.ok(!fs.existsSync(path.join(pkg, 'build')), 'node_modules/sparsekit/build exists: something compiled the addon at install');
  assert.ok(fs.existsSync(path.join(pkg, prebuildRel)), `${prebuildRel} is not installed`);
});

function checkSmoke(t: TestContext, out: Ran, runtime: string): void {
  assert.equal(out.status, 0, `${runtime} smoke failed\n--- stdout\n${out.stdout}\n--- stderr\n${out.stderr}`);
  const r = lastJson(out.stdout);
  assert.equal(r.ok, true);
  assert.equal(r.binary, prebuildRel, `${runtime} loaded ${r.binary}, not the prebuild`);
  assert.ok(String(r.runtime).startsWith(runtime), `ran under ${r.runtime}, expected ${runtime}`);
  t.diagnostic(`${r.runtime}: info().isa = ${r.isa}, loaded ${r.binary}`);
}

test('Node: ESM import and CommonJS require load the prebuild and linear is right', (t) => {
  checkSmoke(t, run(process.execPath, ['smoke.mjs'], { cwd: project }), 'node');
  const cjs = run(process.execPath, ['smoke.cjs'], { cwd: project });
  assert.equal(cjs.status, 0, cjs.stderr);
  assert.equal(lastJson(cjs.stdout).ok, true);
});

test('Bun runs the same smoke scripts', (t) => {
  const bun = bunBin();
  checkSmoke(t, run(bun, ['smoke.mjs'], { cwd: project }), 'bun');
  const cjs = run(bun, ['smoke.cjs'], { cwd: project });
  assert.equal(cjs.status, 0, cjs.stderr);
  assert.equal(lastJson(cjs.stdout).ok, true);
});

// Deno loads Node-API addons from npm packages in a node_modules directory.
// Its permissions: --allow-ffi to dlopen the addon, --allow-read for
// node-gyp-build's directory scan, --allow-env for the variables it reads.
const DENO_FLAGS = ['run', '--allow-ffi', '--allow-read', '--allow-env', '--no-lock'];

test('Deno runs the same smoke scripts', (t) => {
  const deno = pkgBin('deno');
  checkSmoke(t, run(deno, [...DENO_FLAGS, 'smoke.mjs'], { cwd: project }), 'deno');
  const cjs = run(deno, [...DENO_FLAGS, 'smoke.cjs'], { cwd: project });
  assert.equal(cjs.status, 0, cjs.stderr);
  assert.equal(lastJson(cjs.stdout).ok, true);
});

test('Deno without --allow-ffi refuses to open the addon (the permission it needs)', () => {
  const r = run(pkgBin('deno'), ['run', '--allow-read', '--allow-env', '--no-lock', 'smoke.mjs'], { cwd: project });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /NotCapable: Requires ffi access to ".*sparsekit\.napi\.node", run again with the --allow-ffi flag/);
});
