import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockSparseMatrix, MoELayer, NMSparseMatrix, SparseExperts, sparseExpertsForward, sparsePlainExpertsForward, type SparseExpertFormat } from '../lib/index';
import { checkOp, relError } from './harness';
import { expertsForwardRef, randomPlan, type TestPlan } from './reference/experts';
import { Rng } from './reference/rng';

type T2 = { data: Float32Array; shape: number[] };

/** The dense matrix a format keeps of W [rows, cols] (computed through the format's own toDense). */
function prunedDense(W: T2, spec: SparseExpertFormat): Float32Array {
  if (spec.format === 'bsr') {
    const bs = typeof spec.blockSize === 'number' ? [spec.blockSize, spec.blockSize] : spec.blockSize;
    return BlockSparseMatrix.fromDense(W, { blockSize: bs, density: spec.density }).toDense().data;
  }
  return NMSparseMatrix.prune(W, { n: spec.n, m: spec.m }).toDense().data;
}

function pruneStack(W: T2, spec: SparseExpertFormat): Float32Array {
  const [E, r, c] = W.shape;
  const out = new Float32Array(W.data.length);
  for (let e = 0; e < E; e++) out.set(prunedDense({ data: W.data.subarray(e * r * c, (e + 1) * r * c), shape: [r, c] }, spec), e * r * c);
  return out;
}

interface In {
  x: T2;
  plan: TestPlan;
  gateUp: T2; // [E, 2f, d]
  down: T2; // [E, d, f]
  spec: SparseExpertFormat;
}

const specs: SparseExpertFormat[] = [
  { format: 'bsr', blockSize: 8, density: 0.25 },
  { format: 'bsr', blockSize: [4, 8], density: 0.5 },
  { format: 'nm', n: 2, m: 4 },
  { format: 'nm', n: 1, m: 8 },
  // ffn 24 is not a multiple of the 16-row blocks: the per-expert path with a GLU pass
  { format: 'bsr', blockSize: [16, 8], density: 0.5 },
  // enough token tiles for the grouped kernels
  { format: 'bsr', blockSize: 8, density: 0.25 },
  { format: 'nm', n: 2, m: 4 },
];

checkOp({
  name: 'sparseExpertsForward',
  samples: () => {
    const rng = new Rng(90);
    const cases: [number, number, number][] = [[1, 4, 2], [23, 8, 2], [64, 16, 4], [9, 3, 3], [40, 4, 2], [300, 4, 2], [300, 8, 2]];
    const out: { label: string; inputs: In }[] = [];
    for (const [i, spec] of specs.entries()) {
      const [T, E, k] = cases[i];
      const d = 32, f = 24;
      const plan = randomPlan(rng, T, E, k, { pDrop: i === 1 ? 0.3 : 0, hot: i === 2 ? [1] : undefined });
      out.push({
        label: `${JSON.stringify(spec)} T=${T} E=${E} k=${k}`,
        inputs: {
          x: { data: rng.floats(T * d), shape: [T, d] },
          plan,
          gateUp: { data: rng.floats(E * 2 * f * d, 0.2), shape: [E, 2 * f, d] },
          down: { data: rng.floats(E * d * f, 0.2), shape: [E, d, f] },
          spec,
        },
      });
    }
    return out;
  },
  prepare: (s: In) => ({ gu: SparseExperts.prune(s.gateUp, s.spec), dn: SparseExperts.prune(s.down, s.spec) }),
  run: (p, s) => sparseExpertsForward(s.x, s.plan, p.gu, p.dn),
  runAsync: async (p, s) => sparseExpertsForward(s.x, s.plan, p.gu, p.dn),
  reference: (s) => {
    const [E, f2, d] = s.gateUp.shape;
    const f = f2 / 2;
    const gu = pruneStack(s.gateUp, s.spec);
    const w1 = new Float32Array(E * f * d);
    const w3 = new Float32Array(E * f * d);
    for (let e = 0; e < E; e++) {
      w1.set(gu.subarray(e * 2 * f * d, (e * 2 + 1) * f * d), e * f * d);
      w3.set(gu.subarray((e * 2 + 1) * f * d, (e + 1) * 2 * f * d), e * f * d);
    }
    return expertsForwardRef(s.x.data, d, s.plan, w1, w3, pruneStack(s.down, s.spec), f, 'silu');
  },
  tolerance: 1e-5,
});

test('MoELayer.sparsifyExperts: runs on the pruned weights, reports the error vs dense, densify() restores', () => {
  const rng = new Rng(91);
  const E = 4, d = 32, f = 16;
  const w = {
    router: { data: rng.floats(E * d), shape: [E, d] },
    gate: { data: rng.floats(E * f * d, 0.2), shape: [E, f, d] },
    up: { data: rng.floats(E * f * d, 0.2), shape: [E, f, d] },
    down: { data: rng.floats(E * d * f, 0.2), shape: [E, d, f] },
  };
  const layer = new MoELayer({ dModel: d, dFF: f, numExperts: E, architecture: 'mixtral' }, w);
  const x = { data: rng.floats(40 * d), shape: [40, d] };
  const dense = layer.forward(x).y.data.slice();
  for (const spec of [{ format: 'nm', n: 2, m: 4 }, { format: 'bsr', blockSize: 8, density: 0.25 }] as SparseExpertFormat[]) {
    const { relativeError, density } = layer.sparsifyExperts(spec, x);
    assert.equal(layer.expertFormat, spec.format);
    assert.ok(Math.abs(density - (spec.format === 'nm' ? 0.5 : 0.25)) < 0.02, `density ${density}`);
    const y = layer.forward(x).y.data;
    assert.ok(Math.abs(relError(y, dense) - relativeError) < 1e-9, 'reported error is the measured one');
    const buf = new Float32Array(y.length).fill(Number.NaN);
    assert.equal(layer.forward(x, { out: buf }).y.data, buf);
    assert.deepEqual(Array.from(buf), Array.from(y), 'sparse experts: forward with options.out');
    assert.ok(relativeError > 1e-3 && relativeError < 1.5, `pruning changes the output: ${relativeError}`);
    // Same as a dense layer built from the pruned weights.
    const gu = new Float32Array(E * 2 * f * d);
    for (let e = 0; e < E; e++) {
      gu.set(w.gate.data.subarray(e * f * d, (e + 1) * f * d), e * 2 * f * d);
      gu.set(w.up.data.subarray(e * f * d, (e + 1) * f * d), (e * 2 + 1) * f * d);
    }
    const pruned = new MoELayer({ dModel: d, dFF: f, numExperts: E, architecture: 'mixtral' }, {
      router: w.router,
      gateUp: { data: pruneStack({ data: gu, shape: [E, 2 * f, d] }, spec), shape: [E, 2 * f, d] },
      down: { data: pruneStack(w.down, spec), shape: [E, d, f] },
    });
    assert.ok(relError(y, pruned.forward(x).y.data) < 1e-5);
    layer.densify();
    assert.deepEqual(Array.from(layer.forward(x).y.data), Array.from(dense));
  }
  assert.throws(() => SparseExperts.prune({ data: new Float32Array(4), shape: [2, 2] }, specs[0]), TypeError);
  assert.throws(() => SparseExperts.prune({ data: new Float32Array(16), shape: [1, 4, 4] }, { format: 'csr' } as never), /format must be 'bsr' or 'nm'/);
});

test('sparseExpertsForward / sparsePlainExpertsForward: `out` receives the result (no allocation), bad `out` is a named error', () => {
  const rng = new Rng(92);
  const E = 4, d = 16, f = 8, T = 21;
  const plan = randomPlan(rng, T, E, 2);
  const x = { data: rng.floats(T * d), shape: [T, d] };
  for (const spec of [specs[0], { format: 'nm', n: 2, m: 4 }] as SparseExpertFormat[]) {
    const gu = SparseExperts.prune({ data: rng.floats(E * 2 * f * d, 0.2), shape: [E, 2 * f, d] }, spec);
    const w1 = SparseExperts.prune({ data: rng.floats(E * f * d, 0.2), shape: [E, f, d] }, spec);
    const dn = SparseExperts.prune({ data: rng.floats(E * d * f, 0.2), shape: [E, d, f] }, spec);
    const calls: [string, (o?: Float32Array | null) => { data: Float32Array }][] = [
      ['sparseExpertsForward', (o) => sparseExpertsForward(x, plan, gu, dn, { out: o })],
      ['sparsePlainExpertsForward', (o) => sparsePlainExpertsForward(x, plan, w1, dn, { activation: 'relu', out: o })],
    ];
    for (const [name, call] of calls) {
      const fresh = call().data;
      const out = new Float32Array(T * d).fill(Number.NaN);
      const y = call(out);
      assert.equal(y.data, out, `${name}: returns out itself`);
      assert.deepEqual(Array.from(out), Array.from(fresh), `${name}: same values as a fresh result`);
      assert.throws(() => call(new Float64Array(T * d) as never), (e: unknown) => e instanceof TypeError && /options\.out/.test(String(e)));
      assert.throws(() => call(new Float32Array(T * d - 1)), (e: unknown) => e instanceof RangeError && /options\.out has 335 floats/.test(String(e)));
    }
  }
  // no routed slots: out is zeroed
  const empty = { ...plan, sortedSlots: new Int32Array(0), expertOffsets: new Int32Array(E + 1) };
  const gu0 = SparseExperts.prune({ data: rng.floats(E * 2 * f * d, 0.2), shape: [E, 2 * f, d] }, specs[0]);
  const dn0 = SparseExperts.prune({ data: rng.floats(E * d * f, 0.2), shape: [E, d, f] }, specs[0]);
  const out = new Float32Array(T * d).fill(7);
  assert.equal(sparseExpertsForward(x, empty as never, gu0, dn0, { out }).data, out);
  assert.ok(out.every((v) => v === 0));
});
