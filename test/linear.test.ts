import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import * as sk from '../lib/index';
import { info, linear, linearAsync, prepackLinear, setNumThreads, getNumThreads, setIsa, type PackedLinear } from '../lib/index';
import { native } from '../lib/native';
import { checkBadInputs, checkOp, relError, type BadCase } from './harness';
import { linearRef, type Act } from './reference/dense';
import { Rng } from './reference/rng';

interface LinearInputs {
  x: { data: Float32Array; shape: number[] };
  W: { data: Float32Array; shape: number[] };
  bias: Float32Array | null;
  activation: Act;
  packed: boolean;
}

const ACTS: Act[] = ['none', 'relu', 'gelu', 'gelu_tanh', 'silu'];

function linearSamples(): { label: string; inputs: LinearInputs }[] {
  const rng = new Rng(20261128);
  // Edge shapes: 1, primes, non-multiples of every tile (MR 4/6/8, NR 4/16/32),
  // k past one KC block (192/256), m past one MC block (240).
  const fixed: [number, number, number][] = [
    [1, 1, 1], [1, 4096, 3], [2, 17, 1], [7, 33, 31], [6, 256, 16], [13, 257, 47], [64, 300, 100],
    [300, 31, 17], [5, 1000, 3], [97, 513, 129], [241, 520, 33], [16, 64, 64], [1, 2, 300],
  ];
  const shapes = [...fixed];
  for (let i = 0; i < 12; i++) shapes.push([rng.int(1, 300), rng.int(1, 200), rng.int(1, 200)]);
  return shapes.map(([m, k, n], i) => {
    const activation = ACTS[i % ACTS.length];
    const withBias = i % 3 !== 1;
    const packed = i % 2 === 0;
    return {
      label: `m=${m} k=${k} n=${n} act=${activation} bias=${withBias} packed=${packed}`,
      inputs: {
        x: { data: rng.floats(m * k), shape: [m, k] },
        W: { data: rng.floats(n * k, 1 / Math.sqrt(k)), shape: [n, k] },
        bias: withBias ? rng.floats(n) : null,
        activation,
        packed,
      },
    };
  });
}

checkOp<LinearInputs, PackedLinear | LinearInputs['W']>({
  name: 'linear',
  samples: linearSamples,
  prepare: (s) => (s.packed ? prepackLinear(s.W) : s.W),
  run: (w, s) => linear(s.x, w, { bias: s.bias, activation: s.activation }),
  runAsync: (w, s) => linearAsync(s.x, w, { bias: s.bias, activation: s.activation }),
  reference: (s) => linearRef(s.x.data, s.x.shape[0], s.x.shape[1], s.W.data, s.W.shape[0], s.bias, s.activation),
  // fp32 accumulation over k ≤ 4096 of O(1) terms: ~1e-6 typical; a dropped
  // tile or an off-by-one is O(1e-2) or worse.
  tolerance: 1e-5,
});

test('linear: packed and unpacked W give the same bits; out buffer is used and may be larger', () => {
  const rng = new Rng(7);
  const x = { data: rng.floats(5 * 40), shape: [5, 40] };
  const W = { data: rng.floats(9 * 40), shape: [9, 40] };
  const a = linear(x, W);
  const b = linear(x, prepackLinear(W));
  assert.deepEqual(a.shape, [5, 9]);
  assert.deepEqual(Array.from(a.data), Array.from(b.data));
  const out = new Float32Array(100).fill(123);
  const c = linear(x, W, { out });
  assert.equal(c.data.buffer, out.buffer);
  assert.equal(c.data.length, 45);
  assert.deepEqual(Array.from(c.data), Array.from(a.data));
  assert.equal(out[45], 123, 'elements past the result are left alone');
});

test('linear: a row gives the same bits alone, in a small batch (decode path) and in a large one (blocked path), every ISA', () => {
  // Decode-sized batches (one row panel) take the streaming kernel, larger
  // ones the KC-blocked tiles; both run one FMA chain per output in k order,
  // so a token's output does not depend on what it is batched with.
  const rng = new Rng(99);
  const k = 700, n = 53, m = 37;
  const x = { data: rng.floats(m * k), shape: [m, k] };
  const W = { data: rng.floats(n * k, 1 / Math.sqrt(k)), shape: [n, k] };
  const bias = rng.floats(n);
  const best = info().isa;
  for (const isa of info().supportedIsas) {
    setIsa(isa);
    try {
      const P = prepackLinear(W);
      const all = linear(x, P, { bias, activation: 'silu' }).data;
      for (const rows of [1, 2, 3, 5, 6, 8]) {
        for (const r0 of [0, 11, m - rows]) {
          const part = { data: x.data.slice(r0 * k, (r0 + rows) * k), shape: [rows, k] };
          const y = linear(part, P, { bias, activation: 'silu' }).data;
          assert.deepEqual(Array.from(y), Array.from(all.slice(r0 * n, (r0 + rows) * n)), `${isa}: rows ${r0}..${r0 + rows}`);
        }
      }
    } finally {
      setIsa(best);
    }
  }
});

test('linear: inputs are never modified', () => {
  const rng = new Rng(8);
  const x = { data: rng.floats(3 * 20), shape: [3, 20] };
  const W = { data: rng.floats(4 * 20), shape: [4, 20] };
  const bias = rng.floats(4);
  const copies = [x.data.slice(), W.data.slice(), bias.slice()];
  linear(x, W, { bias, activation: 'gelu' });
  assert.deepEqual([x.data, W.data, bias], copies);
});

test('linear: a packed weight keeps its kernel after the ISA changes', () => {
  const isas = info().supportedIsas;
  const rng = new Rng(9);
  const x = { data: rng.floats(3 * 50), shape: [3, 50] };
  const W = { data: rng.floats(20 * 50), shape: [20, 50] };
  const start = info().isa;
  const packed = prepackLinear(W);
  assert.equal(packed.isa, start);
  const before = linear(x, packed).data.slice();
  for (const isa of isas) {
    setIsa(isa);
    assert.deepEqual(Array.from(linear(x, packed).data), Array.from(before));
  }
  setIsa(start);
});

test('linear: concurrent async calls all resolve correctly', async () => {
  const rng = new Rng(10);
  const W = { data: rng.floats(64 * 128), shape: [64, 128] };
  const packed = prepackLinear(W);
  const xs = Array.from({ length: 8 }, () => ({ data: rng.floats(33 * 128), shape: [33, 128] }));
  const ys = await Promise.all(xs.map((x, i) => linearAsync(x, i % 2 ? packed : W)));
  for (let i = 0; i < xs.length; i++) {
    const ref = linearRef(xs[i].data, 33, 128, W.data, 64, null, 'none');
    assert.ok(relError(ys[i].data, ref) < 1e-5);
  }
});

test('SPARSEKIT_ISA forces a lower instruction set at load, and the results agree', () => {
  const script = `
    const { info, linear } = require(${JSON.stringify(path.join(__dirname, '..', 'lib', 'index.ts'))});
    const x = { data: Float32Array.from({length: 64*96}, (_, i) => Math.sin(i)), shape: [64, 96] };
    const W = { data: Float32Array.from({length: 40*96}, (_, i) => Math.cos(i)), shape: [40, 96] };
    const y = linear(x, W, { activation: 'silu' });
    process.stdout.write(JSON.stringify({ isa: info().isa, reason: info().isaReason, kernel: info().kernels.dense, y: Array.from(y.data) }));
  `;
  const runWith = (isa: string | undefined) => {
    const env = { ...process.env };
    if (isa) env.SPARSEKIT_ISA = isa;
    else delete env.SPARSEKIT_ISA;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], { env, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as { isa: string; reason: string; kernel: string; y: number[] };
  };
  const best = runWith(undefined);
  const scalar = runWith('scalar');
  assert.equal(scalar.isa, 'scalar');
  assert.match(scalar.reason, /SPARSEKIT_ISA=scalar/);
  assert.match(scalar.kernel, /scalar/);
  if (best.isa !== 'scalar') assert.notEqual(best.kernel, scalar.kernel);
  assert.ok(relError(scalar.y, best.y) < 1e-5);
  const bogus = runWith('sse9');
  assert.equal(bogus.isa, best.isa);
  assert.match(bogus.reason, /unknown/);
});

test('setNumThreads/getNumThreads and info()', () => {
  const n = getNumThreads();
  assert.ok(n >= 1);
  setNumThreads(3);
  assert.equal(getNumThreads(), 3);
  assert.equal(info().threads, 3);
  setNumThreads(n);
  const i = info();
  assert.match(i.version, /^\d+\.\d+\.\d+/);
  assert.ok(i.supportedIsas.includes(i.isa));
  assert.equal(typeof i.backends.cuda.reason, 'string');
  assert.throws(() => setNumThreads(0), RangeError);
  assert.throws(() => setNumThreads(1.5), RangeError);
  assert.throws(() => setNumThreads('2' as unknown as number), TypeError);
  assert.throws(() => setIsa('sse9' as never), RangeError);
  assert.throws(() => setIsa(3 as never), TypeError);
});

// ---- bad inputs -------------------------------------------------------------

const okX = () => ({ data: new Float32Array(6), shape: [2, 3] });
const okW = () => ({ data: new Float32Array(12), shape: [4, 3] });
type AnyFn = (...a: unknown[]) => unknown;

function linearBadCases(fn: AnyFn, fname: string): BadCase[] {
  const T = TypeError;
  const R = RangeError;
  const cases: [string, unknown[], typeof TypeError, RegExp][] = [
    ['x missing', [undefined, okW()], T, /x must be a tensor/],
    ['x a string', ['x', okW()], T, /x must be a tensor/],
    ['x a bare Float32Array', [new Float32Array(6), okW()], T, /x must be a tensor/],
    ['x.data a Float64Array', [{ data: new Float64Array(6), shape: [2, 3] }, okW()], T, /x\.data must be a Float32Array, got a Float64Array/],
    ['x.data a plain array', [{ data: [1, 2, 3, 4, 5, 6], shape: [2, 3] }, okW()], T, /x\.data must be a Float32Array/],
    ['x.shape missing', [{ data: new Float32Array(6) }, okW()], T, /x\.shape must be an array/],
    ['x.shape rank 1', [{ data: new Float32Array(6), shape: [6] }, okW()], R, /x\.shape must have 2 dimensions/],
    ['x.shape rank 3', [{ data: new Float32Array(6), shape: [1, 2, 3] }, okW()], R, /x\.shape must have 2 dimensions/],
    ['x.shape zero dim', [{ data: new Float32Array(0), shape: [0, 3] }, okW()], R, /x\.shape\[0\] must be ≥ 1/],
    ['x.shape negative dim', [{ data: new Float32Array(6), shape: [-2, -3] }, okW()], R, /x\.shape\[0\] must be ≥ 1/],
    ['x.shape fractional', [{ data: new Float32Array(6), shape: [1.5, 4] }, okW()], R, /x\.shape\[0\] must be an integer/],
    ['x.shape NaN', [{ data: new Float32Array(6), shape: [NaN, 3] }, okW()], R, /x\.shape\[0\] must be an integer/],
    ['x.shape string dim', [{ data: new Float32Array(6), shape: ['2', 3] }, okW()], T, /x\.shape\[0\] must be an integer/],
    ['x.shape huge', [{ data: new Float32Array(6), shape: [2 ** 40, 3] }, okW()], R, /x\.shape\[0\] must be ≥ 1 and ≤ 2\^31/],
    ['x.data too short', [{ data: new Float32Array(5), shape: [2, 3] }, okW()], R, /x\.data has 5 elements but x\.shape \[2, 3\] needs 6/],
    ['x.data too long', [{ data: new Float32Array(7), shape: [2, 3] }, okW()], R, /x\.data has 7 elements/],
    ['W missing', [okX(), undefined], T, /W must be a tensor/],
    ['W a number', [okX(), 5], T, /W must be a tensor/],
    ['W an object without data', [okX(), { shape: [4, 3] }], T, /W must be a tensor/],
    ['W.data an Int32Array', [okX(), { data: new Int32Array(12), shape: [4, 3] }], T, /W\.data must be a Float32Array, got an Int32Array/],
    ['W in ≠ x in', [okX(), { data: new Float32Array(8), shape: [4, 2] }], R, /W\.shape\[1\] \(in = 2\) must equal x\.shape\[1\] \(in = 3\)/],
    ['W.data wrong length', [okX(), { data: new Float32Array(11), shape: [4, 3] }], R, /W\.data has 11 elements/],
    ['packed W for another in', [okX(), prepackLinear({ data: new Float32Array(8), shape: [4, 2] })], R, /W was packed for in = 2 but x has in = 3/],
    ['options a number', [okX(), okW(), 7], T, /options must be an object/],
    ['bias a Float64Array', [okX(), okW(), { bias: new Float64Array(4) }], T, /bias must be a Float32Array/],
    ['bias wrong length', [okX(), okW(), { bias: new Float32Array(3) }], R, /bias has 3 elements but W has out = 4/],
    ['bias tensor wrong shape', [okX(), okW(), { bias: { data: new Float32Array(4), shape: [2, 2] } }], R, /bias\.shape must have 1 dimensions/],
    ['activation unknown', [okX(), okW(), { activation: 'tanh' }], R, /activation must be one of none\|relu\|gelu\|gelu_tanh\|silu, got 'tanh'/],
    ['activation a number', [okX(), okW(), { activation: 1 }], T, /activation must be a string/],
    ['out too small', [okX(), okW(), { out: new Float32Array(7) }], R, /out is too small: y \[tokens, out\] needs 8 floats, out has 7/],
    ['out a Float64Array', [okX(), okW(), { out: new Float64Array(8) }], T, /out must be a Float32Array/],
  ];
  return cases.map(([label, args, error, message]) => ({
    label,
    call: () => fn(...args),
    error,
    message: new RegExp(`^${fname}: .*` + message.source),
  }));
}

checkBadInputs('linear', linearBadCases(linear as AnyFn, 'linear'));
checkBadInputs('linearAsync', linearBadCases(linearAsync as AnyFn, 'linearAsync'));
checkBadInputs('raw binding linear', linearBadCases(native.linear as AnyFn, 'linear'));
checkBadInputs('prepackLinear', [
  { label: 'W a string', call: () => prepackLinear('w' as never), error: TypeError, message: /^prepackLinear: W must be a tensor/ },
  {
    label: 'W rank 3',
    call: () => prepackLinear({ data: new Float32Array(8), shape: [2, 2, 2] }),
    error: RangeError,
    message: /^prepackLinear: W\.shape must have 2 dimensions/,
  },
  {
    label: 'PackedLinear constructed directly',
    call: () => new (native as unknown as { PackedLinear: new (...a: unknown[]) => unknown }).PackedLinear({}),
    error: TypeError,
    message: /use prepackLinear/,
  },
]);

test('raw binding survives arbitrary garbage (fast-check): only TypeError/RangeError, never a crash', () => {
  const garbage = fc.oneof(
    fc.anything(),
    fc.record({ data: fc.float32Array({ maxLength: 20 }), shape: fc.array(fc.oneof(fc.integer({ min: -3, max: 8 }), fc.double()), { maxLength: 4 }) }),
    fc.record({ data: fc.oneof(fc.int32Array({ maxLength: 8 }), fc.float64Array({ maxLength: 8 })), shape: fc.array(fc.nat(5), { maxLength: 3 }) }),
  );
  const opts = fc.oneof(
    fc.anything(),
    fc.record({ bias: garbage, activation: fc.oneof(fc.string(), fc.constantFrom('relu', 'gelu', 'silu')), out: fc.oneof(garbage, fc.float32Array({ maxLength: 30 })) }, { requiredKeys: [] }),
  );
  const fns = [native.linear, native.prepackLinear, native.setNumThreads, native.setIsa] as AnyFn[];
  fc.assert(
    fc.property(fc.nat(fns.length - 1), garbage, garbage, opts, (fi, a, b, c) => {
      try {
        const r = fns[fi](a, b, c);
        if (fi === 2) native.setNumThreads(2);
        return r !== undefined || fi >= 2;
      } catch (e) {
        return e instanceof TypeError || e instanceof RangeError;
      }
    }),
    { numRuns: 3000 },
  );
  setNumThreads(Math.max(1, require('node:os').availableParallelism?.() ?? 2));
});

test('measureReadBandwidth: a positive, finite rate from the pool threads; bad arguments are named errors', () => {
  const r = sk.measureReadBandwidth({ megabytes: 32, passes: 3 });
  assert.equal(r.megabytes, 32);
  assert.equal(r.passes, 3);
  assert.equal(r.threads, sk.getNumThreads());
  assert.ok(Number.isFinite(r.medianGBps) && r.medianGBps > 0.1, `median ${r.medianGBps}`);
  assert.ok(r.bestGBps >= r.medianGBps, `best ${r.bestGBps} < median ${r.medianGBps}`);
  assert.throws(() => sk.measureReadBandwidth({ megabytes: 8 }), (e: Error) => e instanceof RangeError && /megabytes/.test(e.message));
  assert.throws(() => sk.measureReadBandwidth({ megabytes: 1e9 }), (e: Error) => e instanceof RangeError && /megabytes/.test(e.message));
  assert.throws(() => sk.measureReadBandwidth({ passes: 0 }), (e: Error) => e instanceof RangeError && /passes/.test(e.message));
  assert.throws(() => sk.measureReadBandwidth({ passes: 2.5 }), (e: Error) => e instanceof RangeError && /passes/.test(e.message));
  assert.throws(() => sk.measureReadBandwidth({ megabytes: '64' as unknown as number }), (e: Error) => e instanceof TypeError && /megabytes/.test(e.message));
  assert.throws(() => sk.measureReadBandwidth(null as unknown as {}), TypeError);
});
