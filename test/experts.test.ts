import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  combine,
  combineAsync,
  expertsForward,
  expertsForwardAsync,
  groupedGatedLinear,
  groupedGatedLinearAsync,
  groupedLinear,
  groupedLinearAsync,
  permute,
  permuteAsync,
  prepackExperts,
  prepackGatedExperts,
} from '../lib/index';
import { native } from '../lib/native';
import { checkBadInputs, checkOp, type BadCase } from './harness';
import type { Act } from './reference/dense';
import { expertsForwardRef, groupedGatedRef, groupedLinearRef, randomPlan, type TestPlan } from './reference/experts';
import { Rng } from './reference/rng';

type T2 = { data: Float32Array; shape: number[] };

// Plans covering: uneven groups with empty experts (hot experts), one expert
// taking every token (E = 1, or k = E), a single token, k = 1…8, E = 1…64,
// dropped slots.
function planCases(rng: Rng): { label: string; plan: TestPlan }[] {
  const specs: [number, number, number, { pDrop?: number; hot?: number[] }][] = [
    [1, 1, 1, {}],
    [1, 8, 8, {}],
    [13, 1, 1, {}],
    [37, 8, 2, { hot: [3] }],
    [20, 64, 6, { hot: [0, 5, 63] }],
    [50, 16, 4, { pDrop: 0.2 }],
    [7, 3, 3, {}],
    [64, 64, 8, {}],
    [33, 5, 1, { pDrop: 0.5, hot: [4] }],
    // With in = 450 below (more than one k slice of every ISA's kernels):
    // ~20 rows per expert (the panel-by-panel walk of a small row block) and
    // ~150 (the slice-by-slice walk).
    [40, 2, 1, {}],
    [300, 2, 1, {}],
  ];
  return specs.map(([T, E, k, o]) => ({ label: `T=${T} E=${E} k=${k} ${JSON.stringify(o)}`, plan: randomPlan(rng, T, E, k, o) }));
}

interface GroupedIn {
  xs: T2;
  offsets: Int32Array;
  W: T2;
  W3: T2 | null;
  bias: T2 | null;
  act: Act;
}

function groupedSamples(gated: boolean) {
  return () => {
    const rng = new Rng(gated ? 61 : 60);
    const dims: [number, number][] = [[1, 1], [17, 5], [40, 33], [7, 64], [70, 19]];
    const acts: Act[] = gated ? ['silu', 'gelu', 'gelu_tanh', 'relu'] : ['none', 'relu', 'silu', 'gelu'];
    return planCases(rng).map(({ label, plan }, i) => {
      const [k, n] = i >= 9 ? [450, 40] : dims[i % dims.length];
      const E = plan.experts;
      const rows = plan.sortedSlots.length;
      return {
        label: `${label} in=${k} out=${n}`,
        inputs: {
          xs: { data: rng.floats(rows * k), shape: [rows, k] },
          offsets: plan.expertOffsets,
          W: { data: rng.floats(E * n * k, 1 / Math.sqrt(k)), shape: [E, n, k] },
          W3: gated ? { data: rng.floats(E * n * k, 1 / Math.sqrt(k)), shape: [E, n, k] } : null,
          bias: !gated && i % 2 === 0 ? { data: rng.floats(E * n), shape: [E, n] } : null,
          act: acts[i % acts.length],
        } as GroupedIn,
      };
    });
  };
}

// Empty batches (no rows at all) cannot be tensors (dims are ≥ 1); plans with
// every slot dropped are covered by combine below.
const nonEmpty = (s: { inputs: GroupedIn }) => s.inputs.xs.shape[0] > 0;

checkOp({
  name: 'groupedLinear',
  samples: () => groupedSamples(false)().filter(nonEmpty),
  prepare: (s: GroupedIn) => prepackExperts(s.W, { bias: s.bias }),
  run: (w, s) => groupedLinear(s.xs, s.offsets, w, { activation: s.act }),
  runAsync: (w, s) => groupedLinearAsync(s.xs, s.offsets, w, { activation: s.act }),
  reference: (s) => groupedLinearRef(s.xs.data, s.offsets, s.W.data, s.W.shape[0], s.W.shape[1], s.W.shape[2], s.bias?.data ?? null, s.act),
  tolerance: 1e-5,
});

checkOp({
  name: 'groupedGatedLinear',
  samples: () => groupedSamples(true)().filter(nonEmpty),
  prepare: (s: GroupedIn) => prepackGatedExperts(s.W, s.W3!),
  run: (w, s) => groupedGatedLinear(s.xs, s.offsets, w, { activation: s.act }),
  runAsync: (w, s) => groupedGatedLinearAsync(s.xs, s.offsets, w, { activation: s.act }),
  reference: (s) => groupedGatedRef(s.xs.data, s.offsets, s.W.data, s.W3!.data, s.W.shape[0], s.W.shape[1], s.W.shape[2], s.act),
  tolerance: 1e-5,
});

interface ForwardIn {
  x: T2;
  plan: TestPlan;
  w1: T2;
  w3: T2;
  w2: T2;
  act: Act;
  concat: boolean;
}

checkOp({
  name: 'expertsForward',
  samples: () => {
    const rng = new Rng(62);
    return planCases(rng).map(({ label, plan }, i) => {
      const d = [8, 33, 16][i % 3];
      const ffn = [12, 7, 40][i % 3];
      const E = plan.experts;
      return {
        label: `${label} d=${d} ffn=${ffn}`,
        inputs: {
          x: { data: rng.floats(plan.tokens * d), shape: [plan.tokens, d] },
          plan,
          w1: { data: rng.floats(E * ffn * d, 1 / Math.sqrt(d)), shape: [E, ffn, d] },
          w3: { data: rng.floats(E * ffn * d, 1 / Math.sqrt(d)), shape: [E, ffn, d] },
          w2: { data: rng.floats(E * d * ffn, 1 / Math.sqrt(ffn)), shape: [E, d, ffn] },
          act: (['silu', 'gelu', 'gelu_tanh'] as Act[])[i % 3],
          concat: i % 2 === 1,
        } as ForwardIn,
      };
    });
  },
  prepare: (s: ForwardIn) => {
    let gateUp;
    if (s.concat) {
      // One [E, 2·ffn, d] stack: gate rows then up rows per expert.
      const [E, ffn, d] = s.w1.shape;
      const cat = new Float32Array(E * 2 * ffn * d);
      for (let e = 0; e < E; e++) {
        cat.set(s.w1.data.subarray(e * ffn * d, (e + 1) * ffn * d), e * 2 * ffn * d);
        cat.set(s.w3.data.subarray(e * ffn * d, (e + 1) * ffn * d), (e * 2 + 1) * ffn * d);
      }
      gateUp = prepackGatedExperts({ data: cat, shape: [E, 2 * ffn, d] });
    } else {
      gateUp = prepackGatedExperts(s.w1, s.w3);
    }
    return { gateUp, down: prepackExperts(s.w2) };
  },
  run: (w, s) => expertsForward(s.x, s.plan, w.gateUp, w.down, { activation: s.act }),
  runAsync: (w, s) => expertsForwardAsync(s.x, s.plan, w.gateUp, w.down, { activation: s.act }),
  reference: (s) => expertsForwardRef(s.x.data, s.x.shape[1], s.plan, s.w1.data, s.w3.data, s.w2.data, s.w1.shape[1], s.act),
  tolerance: 1e-5,
});

test('permute and combine match the slot definitions; combine(permute(x)) with unit weights and k = 1 is x', async () => {
  const rng = new Rng(63);
  for (const { plan } of planCases(rng)) {
    const d = 9;
    const x = { data: rng.floats(plan.tokens * d), shape: [plan.tokens, d] };
    if (plan.sortedSlots.length === 0) continue;
    const xs = permute(x, plan);
    assert.deepEqual(xs.shape, [plan.sortedSlots.length, d]);
    for (let i = 0; i < plan.sortedSlots.length; i++) {
      const t = Math.floor(plan.sortedSlots[i] / plan.k);
      assert.deepEqual(Array.from(xs.data.subarray(i * d, (i + 1) * d)), Array.from(x.data.subarray(t * d, (t + 1) * d)));
    }
    assert.deepEqual(Array.from((await permuteAsync(x, plan)).data), Array.from(xs.data));
    const ys = { data: rng.floats(xs.data.length), shape: xs.shape };
    const y = combine(ys, plan);
    const ya = await combineAsync(ys, plan);
    assert.deepEqual(Array.from(ya.data), Array.from(y.data));
    for (let t = 0; t < plan.tokens; t++) {
      for (let c = 0; c < d; c++) {
        let ref = 0;
        for (let j = 0; j < plan.k; j++) {
          const s = t * plan.k + j;
          const row = Array.prototype.indexOf.call(plan.sortedSlots, s) as number;
          if (row >= 0) ref += plan.weights[s] * ys.data[row * d + c];
        }
        assert.ok(Math.abs(y.data[t * d + c] - ref) <= 1e-6 * (1 + Math.abs(ref)), `combine t=${t} c=${c}`);
      }
    }
  }
  // Identity: k = 1, unit weights, nothing dropped.
  const plan = randomPlan(rng, 30, 4, 1);
  plan.weights.fill(1);
  const x = { data: rng.floats(30 * 5), shape: [30, 5] };
  assert.deepEqual(Array.from(combine(permute(x, plan), plan).data), Array.from(x.data));
});

test('expertsForward: dropped slots pass through as 0; out buffer reused; workspace reuse across shapes', () => {
  const rng = new Rng(64);
  const E = 4, d = 8, ffn = 6;
  const gateUp = prepackGatedExperts(
    { data: rng.floats(E * ffn * d), shape: [E, ffn, d] },
    { data: rng.floats(E * ffn * d), shape: [E, ffn, d] },
  );
  const down = prepackExperts({ data: rng.floats(E * d * ffn), shape: [E, d, ffn] });
  const allDropped = randomPlan(rng, 5, E, 2, { pDrop: 1 });
  const x = { data: rng.floats(5 * d), shape: [5, d] };
  const out = new Float32Array(5 * d).fill(7);
  const y = expertsForward(x, allDropped, gateUp, down, { out });
  assert.equal(y.data.buffer, out.buffer);
  assert.ok(y.data.every((v) => v === 0));
  // Large then small then large batch through the same per-thread workspace.
  for (const T of [200, 3, 120]) {
    const plan = randomPlan(rng, T, E, 2);
    const xt = { data: rng.floats(T * d), shape: [T, d] };
    const a = expertsForward(xt, plan, gateUp, down);
    const b = expertsForward(xt, plan, gateUp, down);
    assert.deepEqual(Array.from(a.data), Array.from(b.data));
  }
});

// ---- bad inputs -------------------------------------------------------------
{
  const rng = new Rng(65);
  const E = 3, d = 4, ffn = 5;
  const gateUp = prepackGatedExperts({ data: rng.floats(E * ffn * d), shape: [E, ffn, d] }, { data: rng.floats(E * ffn * d), shape: [E, ffn, d] });
  const down = prepackExperts({ data: rng.floats(E * d * ffn), shape: [E, d, ffn] });
  const plain = prepackExperts({ data: rng.floats(E * ffn * d), shape: [E, ffn, d] });
  const plan = randomPlan(rng, 6, E, 2);
  const x = { data: rng.floats(6 * d), shape: [6, d] };
  const xs = { data: rng.floats(plan.sortedSlots.length * d), shape: [plan.sortedSlots.length, d] };
  const rows = plan.sortedSlots.length;
  const T = TypeError, R = RangeError;
  const withPlan = (p: Partial<TestPlan>) => ({ ...plan, ...p });
  const cases: [string, () => unknown, typeof TypeError, RegExp][] = [
    ['prepackExperts rank 2', () => prepackExperts({ data: new Float32Array(4), shape: [2, 2] }), R, /^prepackExperts: W\.shape must have 3 dimensions/],
    ['prepackExperts bias shape', () => prepackExperts({ data: new Float32Array(8), shape: [2, 2, 2] }, { bias: { data: new Float32Array(3), shape: [1, 3] } }), R, /^prepackExperts: bias\.shape \[1, 3\] must be \[experts, out\] = \[2, 2\]/],
    ['prepackGatedExperts odd concat', () => prepackGatedExperts({ data: new Float32Array(6), shape: [1, 3, 2] }), R, /gateUp\.shape\[1\] must be even/],
    ['prepackGatedExperts shape mismatch', () => prepackGatedExperts({ data: new Float32Array(6), shape: [1, 3, 2] }, { data: new Float32Array(4), shape: [1, 2, 2] }), R, /up\.shape \[1, 2, 2\] must equal gate\.shape \[1, 3, 2\]/],
    ['groupedLinear experts not packed', () => groupedLinear(xs, plan.expertOffsets, {} as never), T, /^groupedLinear: experts must be a PackedExperts \(use prepackExperts/],
    ['groupedLinear gated stack', () => groupedLinear(xs, plan.expertOffsets, gateUp), T, /experts are gated/],
    ['groupedGatedLinear plain stack', () => groupedGatedLinear(xs, plan.expertOffsets, plain), T, /gateUp must be gated/],
    ['groupedLinear offsets Float32Array', () => groupedLinear({ data: new Float32Array(rows * ffn), shape: [rows, ffn] }, new Float32Array(4) as never, down), T, /expertOffsets must be a Int32Array/],
    ['groupedLinear offsets length', () => groupedLinear({ data: new Float32Array(rows * ffn), shape: [rows, ffn] }, new Int32Array([0, rows]), down), R, /expertOffsets must have experts \+ 1 = 4 entries, got 2/],
    ['groupedLinear offsets start', () => groupedLinear({ data: new Float32Array(rows * ffn), shape: [rows, ffn] }, Int32Array.from([1, 1, 2, rows]), down), R, /expertOffsets\[0\] must be 0, got 1/],
    ['groupedLinear offsets decreasing', () => groupedLinear({ data: new Float32Array(rows * ffn), shape: [rows, ffn] }, Int32Array.from([0, 3, 2, rows]), down), R, /expertOffsets must be non-decreasing/],
    ['groupedLinear offsets end', () => groupedLinear({ data: new Float32Array(rows * ffn), shape: [rows, ffn] }, Int32Array.from([0, 1, 2, rows - 1]), down), R, /expertOffsets\[3\] = \d+ must equal xs\.shape\[0\]/],
    ['groupedLinear xs width', () => groupedLinear(xs, plan.expertOffsets, down), R, /xs\.shape\[1\] = 4 must equal the experts' in = 5/],
    ['groupedLinear out small', () => groupedLinear({ data: new Float32Array(rows * ffn), shape: [rows, ffn] }, plan.expertOffsets, down, { out: new Float32Array(1) }), R, /out is too small/],
    ['permute slot out of range', () => permute(x, withPlan({ sortedSlots: Int32Array.from([0, 12]) })), R, /sortedSlots\[1\] = 12 is outside \[0, tokens·k = 12\)/],
    ['permute negative slot', () => permute(x, withPlan({ sortedSlots: Int32Array.from([-1]) })), R, /sortedSlots\[0\] = -1 is outside/],
    ['permute duplicate slot', () => permute(x, withPlan({ sortedSlots: Int32Array.from([3, 3]) })), R, /sortedSlots\[1\] = 3 appears twice/],
    ['permute k zero', () => permute(x, withPlan({ k: 0 })), R, /^permute: k must be ≥ 1/],
    ['permute k fractional', () => permute(x, withPlan({ k: 1.5 })), R, /^permute: k must be an integer/],
    ['combine ys rows ≠ slots', () => combine({ data: new Float32Array(d), shape: [1, d] }, plan), R, /ys\.shape\[0\] = 1 must equal sortedSlots\.length/],
    ['combine weights not multiple of k', () => combine({ data: new Float32Array(d), shape: [1, d] }, withPlan({ weights: new Float32Array(3), sortedSlots: Int32Array.from([0]) })), R, /weights must have tokens·k entries/],
    ['expertsForward plan a string', () => expertsForward(x, 'plan' as never, gateUp, down), T, /plan must be a routing plan/],
    ['expertsForward plan for another batch', () => expertsForward({ data: rng.floats(5 * d), shape: [5, d] }, plan, gateUp, down), R, /plan\.weights has 12 entries but tokens·k = 10 \(is the plan for a different batch\?\)/],
    ['expertsForward plan for other experts', () => expertsForward(x, withPlan({ expertOffsets: Int32Array.from([0, rows]) }), gateUp, down), R, /expertOffsets must have experts \+ 1 = 4 entries, got 2/],
    ['expertsForward gateUp not gated', () => expertsForward(x, plan, plain, down), T, /gateUp must be gated/],
    ['expertsForward down gated', () => expertsForward(x, plan, gateUp, gateUp), T, /down must be a plain expert stack/],
    ['expertsForward down wrong shape', () => expertsForward(x, plan, gateUp, plain), R, /down must be \[experts, d, ffn\]/],
    ['expertsForward x width', () => expertsForward({ data: rng.floats(6 * 3), shape: [6, 3] }, plan, gateUp, down), R, /gateUp expects d = 4 but x\.shape\[1\] = 3/],
    ['expertsForward activation', () => expertsForward(x, plan, gateUp, down, { activation: 'swish' as never }), R, /activation must be one of/],
  ];
  checkBadInputs(
    'experts ops',
    cases.map(([label, call, error, message]): BadCase => ({ label, call, error, message })),
  );
  checkBadInputs('experts async ops', [
    { label: 'groupedLinearAsync offsets', call: () => groupedLinearAsync({ data: new Float32Array(rows * ffn), shape: [rows, ffn] }, new Int32Array(2), down), error: RangeError, message: /^groupedLinearAsync: expertOffsets must have/ },
    { label: 'expertsForwardAsync plan', call: () => expertsForwardAsync(x, {} as never, gateUp, down), error: TypeError, message: /^expertsForwardAsync: plan\.k must be an integer/ },
    { label: 'raw PackedExperts ctor', call: () => new (native as unknown as { PackedExperts: new (...a: unknown[]) => unknown }).PackedExperts(1), error: TypeError, message: /use prepackExperts/ },
  ]);
}

{
  const { glu, gluAsync } = require('../lib/index') as typeof import('../lib/index');
  const { activate } = require('./reference/dense') as typeof import('./reference/dense');
  checkOp({
    name: 'glu',
    samples: () => {
      const rng = new Rng(66);
      return ([[1, 1], [7, 33], [40, 16], [129, 5]] as const).map(([r, n], i) => ({
        label: `rows=${r} n=${n}`,
        inputs: { h: { data: rng.floats(r * 2 * n, 3), shape: [r, 2 * n] }, act: (['silu', 'gelu', 'gelu_tanh', 'relu'] as Act[])[i] },
      }));
    },
    run: (s) => glu(s.h, { activation: s.act }),
    runAsync: (s) => gluAsync(s.h, { activation: s.act }),
    reference: (s) => {
      const [r, n2] = s.h.shape;
      const n = n2 / 2;
      const y = new Float64Array(r * n);
      for (let i = 0; i < r; i++) for (let j = 0; j < n; j++) y[i * n + j] = activate(s.h.data[i * n2 + j], s.act) * s.h.data[i * n2 + n + j];
      return y;
    },
    tolerance: 1e-6,
  });
  checkBadInputs('glu', [
    { label: 'odd width', call: () => glu({ data: new Float32Array(3), shape: [1, 3] }), error: RangeError, message: /^glu: h\.shape\[1\] must be even/ },
    { label: 'not a tensor', call: () => glu(new Float32Array(4) as never), error: TypeError, message: /^glu: h must be a tensor/ },
  ]);
}
