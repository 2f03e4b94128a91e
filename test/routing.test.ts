import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  route,
  routeAsync,
  routeBackward,
  routeBackwardAsync,
  routingPresets,
  permute,
  combine,
  updateSelectionBias,
  info,
  type RouteOptions,
  type RoutingPlan,
  type Float32Tensor,
} from '../lib/index';
import { native } from '../lib/native';
import { checkBadInputs, checkOp, isaMatrix, relError, withRuntime, type BadCase, type Outputs } from './harness';
import {
  finiteDifference,
  lossesRef,
  refCapacity,
  routeRef,
  weightedSumRef,
  type RefPlan,
} from './reference/routing';
import { Rng } from './reference/rng';

// ---- helpers -----------------------------------------------------------------

const LOSSES = ['loadBalance', 'zLoss', 'importance', 'sequenceBalance'] as const;

function randLogits(rng: Rng, T: number, E: number, scale = 3): Float32Tensor {
  return { data: rng.floats(T * E, scale), shape: [T, E] };
}

/** Logits on a coarse grid: many exact ties. */
function tiedLogits(rng: Rng, T: number, E: number): Float32Tensor {
  const d = new Float32Array(T * E);
  for (let i = 0; i < d.length; i++) d[i] = rng.int(-2, 2) * 0.5;
  return { data: d, shape: [T, E] };
}

function lossVector(aux: Record<string, { value: number } | number | undefined>): Float64Array {
  const out: number[] = [];
  for (const name of LOSSES) {
    const v = aux[name];
    if (v !== undefined) out.push(typeof v === 'number' ? v : v.value);
  }
  return Float64Array.from(out);
}

function planOutputs(p: RoutingPlan): Outputs {
  const outputs: Outputs['outputs'] = {
    expertIds: p.expertIds,
    weights: p.weights,
    tokensPerExpert: p.tokensPerExpert,
    expertOffsets: p.expertOffsets,
    sortedSlots: p.sortedSlots,
    dropped: p.dropped,
    shape: Int32Array.from([p.tokens, p.experts, p.k, p.capacity]),
    losses: lossVector(p.aux),
  };
  for (const name of LOSSES) {
    const g = p.aux[name]?.grad;
    if (g) outputs[`grad.${name}`] = g;
  }
  return { outputs };
}

function refOutputs(r: RefPlan, T: number, E: number): { outputs: Record<string, ArrayLike<number>> } {
  return {
    outputs: {
      expertIds: r.expertIds,
      weights: r.weights,
      tokensPerExpert: r.tokensPerExpert,
      expertOffsets: r.expertOffsets,
      sortedSlots: r.sortedSlots,
      dropped: r.dropped,
      shape: Int32Array.from([T, E, r.k, r.capacity]),
      losses: lossVector(r.aux),
    },
  };
}

/** Structural invariants every plan satisfies, whatever the options. */
function checkPlanInvariants(p: RoutingPlan, o: RouteOptions): void {
  const { tokens: T, experts: E, k } = p;
  assert.equal(p.expertIds.length, T * k);
  assert.equal(p.weights.length, T * k);
  assert.equal(p.expertOffsets.length, E + 1);
  assert.equal(p.expertOffsets[0], 0);
  for (let e = 0; e < E; e++) {
    assert.equal(p.expertOffsets[e + 1] - p.expertOffsets[e], p.tokensPerExpert[e]);
    if (p.capacity > 0) assert.ok(p.tokensPerExpert[e] <= p.capacity);
    for (let i = p.expertOffsets[e]; i < p.expertOffsets[e + 1]; i++) {
      assert.equal(p.expertIds[p.sortedSlots[i]], e, 'sortedSlots groups slots by expert');
      if (i > p.expertOffsets[e]) assert.ok(p.sortedSlots[i] > p.sortedSlots[i - 1], 'stable in slot order');
    }
  }
  assert.equal(p.expertOffsets[E], p.sortedSlots.length);
  // Every slot is exactly one of: dispatched, dropped, padding (−1).
  const seen = new Uint8Array(T * k);
  for (const s of p.sortedSlots) seen[s]++;
  for (const s of p.dropped) seen[s]++;
  for (let s = 0; s < T * k; s++) {
    if (p.expertIds[s] === -1) {
      assert.equal(seen[s], 0);
      assert.equal(p.weights[s], 0);
    } else {
      assert.ok(p.expertIds[s] >= 0 && p.expertIds[s] < E);
      assert.equal(seen[s], 1, `slot ${s} is dispatched or dropped exactly once`);
    }
  }
  for (let i = 1; i < p.dropped.length; i++) assert.ok(p.dropped[i] > p.dropped[i - 1]);
  // No expert twice for a token.
  for (let t = 0; t < T; t++) {
    const row = Array.from(p.expertIds.subarray(t * k, (t + 1) * k)).filter((e) => e >= 0);
    assert.equal(new Set(row).size, row.length);
  }
  if ((o.mode ?? 'top-k') !== 'expert-choice') assert.equal(k, o.k ?? 1);
}

// ---- samples for the generic harness -----------------------------------------------

interface RouteInputs {
  logits: Float32Tensor;
  options: RouteOptions;
}

function describe(o: RouteOptions, T: number, E: number): string {
  const parts = [`T=${T} E=${E}`];
  for (const [key, v] of Object.entries(o)) {
    if (v instanceof Float32Array || v instanceof Int32Array) parts.push(`${key}=[${v.length}]`);
    else if (v && typeof v === 'object' && 'data' in v) parts.push(`${key}=tensor`);
    else parts.push(`${key}=${JSON.stringify(v)}`);
  }
  return parts.join(' ');
}

function routeSamples(): { label: string; inputs: RouteInputs }[] {
  const rng = new Rng(20260501);
  const out: { label: string; inputs: RouteInputs }[] = [];
  const add = (logits: Float32Tensor, options: RouteOptions) =>
    out.push({ label: describe(options, logits.shape[0], logits.shape[1]), inputs: { logits, options } });

  // Every combination of score × score-before/after × renormalize × bias ×
  // group selection, each with its own random shape, k, capacity policy,
  // scaling, noise, jitter and losses.
  let combo = 0;
  for (const score of ['softmax', 'sigmoid', 'none'] as const)
    for (const scoreBeforeTopK of [true, false])
      for (const renormalize of score === 'none' ? [false] : [false, true])
        for (const bias of [false, true])
          for (const grouping of ['none', 'max', 'sum-top2'] as const) {
            combo++;
            const G = grouping === 'none' ? 1 : rng.pick([2, 4, 8]);
            const per = rng.pick(grouping === 'sum-top2' ? [2, 3, 4, 8] : [1, 2, 3, 4, 8]);
            const E = grouping === 'none' ? rng.pick([1, 2, 5, 8, 16, 33, 64]) : G * per;
            const M = grouping === 'none' ? 0 : rng.int(1, G);
            const kMax = grouping === 'none' ? Math.min(8, E) : Math.min(8, M * per);
            const k = rng.int(1, kMax);
            const T = rng.pick([1, 2, 7, 31, 64, 97]);
            const o: RouteOptions = { score, scoreBeforeTopK, renormalize, k, seed: rng.int(0, 1e9) };
            if (bias) o.selectionBias = rng.floats(E, 0.5);
            if (grouping !== 'none') Object.assign(o, { groups: G, topkGroups: M, groupScore: grouping });
            const cap = combo % 4;
            if (cap === 1) Object.assign(o, { capacityFactor: 0.3 + rng.next(), dropPolicy: 'position' });
            if (cap === 2) Object.assign(o, { capacityFactor: 0.3 + rng.next(), dropPolicy: 'score' });
            if (combo % 3 === 0) o.scalingFactor = 2.5;
            if (combo % 5 === 0) o.jitter = 0.1;
            if (combo % 7 === 0) o.noiseLogits = { data: rng.floats(T * E, 2), shape: [T, E] };
            if (combo % 2 === 0) {
              const L = T % 2 === 0 && T > 1 ? T / 2 : T;
              o.aux = { loadBalance: 0.01, zLoss: 0.001, importance: 0.1, sequenceBalance: 0.0001, sequenceLength: L };
              if (combo % 4 === 0) o.aux.gradients = true;
            }
            add(randLogits(rng, T, E), o);
          }

  // T = 1 in every mode.
  add(randLogits(rng, 1, 8), { k: 3 });
  add(randLogits(rng, 1, 8), { mode: 'expert-choice', capacityFactor: 1 });
  add(randLogits(rng, 1, 8), { mode: 'hash', tokenIds: Int32Array.of(42), k: 2 });
  add(randLogits(rng, 1, 8), { k: 2, capacityFactor: 1, aux: { loadBalance: 1, importance: 1, zLoss: 1 } });

  // Large E with k up to 8.
  add(randLogits(rng, 64, 256), { k: 8, renormalize: true, aux: { loadBalance: 0.01, gradients: true } });
  add(randLogits(rng, 100, 256), {
    ...routingPresets['deepseek-v3'],
    selectionBias: rng.floats(256, 0.1),
    aux: { sequenceBalance: 1e-4, sequenceLength: 25, gradients: true },
  });
  add(randLogits(rng, 33, 256), { k: 8, score: 'sigmoid', scoreBeforeTopK: false, groups: 16, topkGroups: 5 });
  add(randLogits(rng, 40, 160), { ...routingPresets['deepseek-v2'], capacityFactor: 1.1 });
  add(randLogits(rng, 20, 256), { k: 256 }); // k = E: every expert, ordered
  add(randLogits(rng, 20, 64), { k: 40, capacityFactor: 1, dropPolicy: 'score' }); // k > 16 path

  // Ties: coarse logits, in every selection path.
  add(tiedLogits(rng, 50, 16), { k: 4 });
  add(tiedLogits(rng, 50, 16), { k: 4, score: 'sigmoid', selectionBias: new Float32Array(16).fill(0.25) });
  add(tiedLogits(rng, 50, 16), { k: 3, groups: 4, topkGroups: 2, groupScore: 'max' });
  add(tiedLogits(rng, 50, 16), { k: 3, groups: 4, topkGroups: 2, groupScore: 'sum-top2', score: 'sigmoid' });
  add(tiedLogits(rng, 50, 16), { k: 2, scoreBeforeTopK: false, capacityFactor: 0.5, dropPolicy: 'score' });
  add(tiedLogits(rng, 30, 8), { mode: 'expert-choice', capacityFactor: 2 });
  add({ data: new Float32Array(40 * 8), shape: [40, 8] }, { k: 2, capacityFactor: 1 }); // all equal
  add({ data: new Float32Array(12 * 8).fill(-0), shape: [12, 8] }, { k: 3 });

  // Capacity overflow: most tokens prefer the same experts.
  {
    const T = 120;
    const E = 12;
    const l = randLogits(rng, T, E, 1);
    for (let t = 0; t < T; t++) {
      l.data[t * E] += 4;
      l.data[t * E + 1] += 3;
    }
    add(l, { k: 2, capacityFactor: 1, dropPolicy: 'position', aux: { loadBalance: 0.01 } });
    add(l, { k: 2, capacityFactor: 1, dropPolicy: 'score', renormalize: true });
    add(l, { k: 3, capacityFactor: 0.25, dropPolicy: 'position', score: 'sigmoid' });
    add(l, { k: 1, capacityFactor: 1.25, jitter: 0.01, seed: 5 });
  }

  // GShard random routing of the 2nd expert, with and without capacity.
  add(randLogits(rng, 200, 16, 1.5), { ...routingPresets.gshard, seed: 77 });
  add(randLogits(rng, 64, 16, 1.5), { k: 2, randomSecondExpert: true, seed: 3 });

  // Expert choice: T < E, T > E, scores, renormalisation, losses.
  add(randLogits(rng, 5, 16), { mode: 'expert-choice', capacityFactor: 2 });
  add(randLogits(rng, 3, 32), { mode: 'expert-choice', capacityFactor: 0.5, renormalize: true });
  add(randLogits(rng, 100, 8), {
    mode: 'expert-choice',
    capacityFactor: 1.5,
    score: 'sigmoid',
    scalingFactor: 2,
    aux: { loadBalance: 0.01, zLoss: 1e-3, importance: 0.1, sequenceBalance: 1e-3, sequenceLength: 20, gradients: true },
  });
  add(randLogits(rng, 64, 8), { mode: 'expert-choice', capacityFactor: 8 }); // C = T: everyone everywhere
  add(randLogits(rng, 40, 8), { mode: 'expert-choice', capacityFactor: 2, jitter: 0.2, noiseLogits: rng.floats(320), seed: 9 });

  // Hash routing.
  {
    const ids = Int32Array.from({ length: 300 }, () => rng.int(-5, 50000));
    add(randLogits(rng, 300, 16), { mode: 'hash', tokenIds: ids });
    add(randLogits(rng, 300, 16), { mode: 'hash', tokenIds: ids, k: 2, score: 'softmax', renormalize: true, seed: 12 });
    add(randLogits(rng, 300, 16), { mode: 'hash', tokenIds: ids, k: 1, score: 'sigmoid', capacityFactor: 1, dropPolicy: 'score' });
  }

  // Noisy top-k as in Shazeer et al.: noise, top-k on H, softmax over the kept.
  add(randLogits(rng, 80, 32), {
    k: 4,
    scoreBeforeTopK: false,
    noiseLogits: { data: rng.floats(80 * 32), shape: [80, 32] },
    seed: 2 ** 40 + 17,
    aux: { importance: 0.1, loadBalance: 0.01, gradients: true },
  });

  // Every preset.
  for (const [name, p] of Object.entries(routingPresets)) {
    const E = name === 'deepseek-v3' ? 256 : name === 'deepseek-v2' ? 160 : name === 'qwen3-moe' ? 128 : 16;
    const T = 48;
    const o: RouteOptions = { ...p };
    if (name === 'hash') o.tokenIds = Int32Array.from({ length: T }, (_, i) => i * 7);
    if (name === 'deepseek-v3') o.selectionBias = rng.floats(E, 0.05);
    add(randLogits(rng, T, E), o);
  }
  return out;
}

checkOp<RouteInputs, RouteInputs>({
  name: 'route',
  samples: routeSamples,
  run: (s) => planOutputs(route(s.logits, s.options)),
  runAsync: async (s) => planOutputs(await routeAsync(s.logits, s.options)),
  reference: (s) => refOutputs(routeRef(s.logits.data, s.logits.shape[0], s.logits.shape[1], s.options), s.logits.shape[0], s.logits.shape[1]),
  // Weights: a few float32 roundings of exp/divide (sk_exp is ~2e-7
  // relative); losses: float32 probabilities summed in float64. A wrong expert
  // or a missed renormalisation is O(1e-1).
  tolerance: { weights: 2e-6, losses: 2e-5 },
});

// ---- gradients by finite differences -------------------------------------------

/** Logits whose entries are well separated, so ±1e-5 never changes a selection. */
function separatedLogits(rng: Rng, T: number, E: number): Float32Tensor {
  const d = new Float32Array(T * E);
  for (let t = 0; t < T; t++) {
    const perm = Array.from({ length: E }, (_, i) => i).sort(() => rng.next() - 0.5);
    for (let e = 0; e < E; e++) d[t * E + e] = (perm[e] - E / 2) * 0.37 + rng.next() * 0.05;
  }
  return { data: d, shape: [T, E] };
}

const GRAD_CASES: { name: string; T: number; E: number; o: RouteOptions }[] = [
  { name: 'softmax before, k=2', T: 8, E: 8, o: { k: 2 } },
  { name: 'softmax before, renormalized, scaled', T: 8, E: 8, o: { k: 3, renormalize: true, scalingFactor: 1.7 } },
  { name: 'softmax after top-k', T: 8, E: 8, o: { k: 3, scoreBeforeTopK: false } },
  { name: 'sigmoid', T: 8, E: 8, o: { k: 2, score: 'sigmoid' } },
  { name: 'sigmoid renormalized, scaled (DeepSeek-V3)', T: 8, E: 16, o: { ...routingPresets['deepseek-v3'], groups: 4, topkGroups: 2, k: 3 } },
  { name: 'sigmoid after, renormalized', T: 6, E: 8, o: { k: 2, score: 'sigmoid', scoreBeforeTopK: false, renormalize: true } },
  { name: 'none (raw logits)', T: 6, E: 8, o: { k: 2, score: 'none', scalingFactor: 0.5 } },
  { name: 'jitter + noise', T: 6, E: 8, o: { k: 2, jitter: 0.2, noiseLogits: Float32Array.from({ length: 48 }, (_, i) => Math.sin(i)), seed: 4 } },
  { name: 'capacity + GShard', T: 10, E: 8, o: { k: 2, renormalize: true, randomSecondExpert: true, capacityFactor: 0.6, seed: 1 } },
  { name: 'expert choice', T: 8, E: 6, o: { mode: 'expert-choice', capacityFactor: 1.5 } },
  { name: 'expert choice renormalized, sigmoid', T: 8, E: 6, o: { mode: 'expert-choice', capacityFactor: 1.5, renormalize: true, score: 'sigmoid' } },
  { name: 'hash, softmax', T: 8, E: 6, o: { mode: 'hash', k: 2, tokenIds: Int32Array.from({ length: 8 }, (_, i) => i * 3) } },
  { name: 'hash, no gate', T: 8, E: 6, o: { mode: 'hash', k: 1, score: 'none', tokenIds: Int32Array.from({ length: 8 }, (_, i) => i) } },
];

for (const { run: isas } of [isaMatrix()]) {
  test(`route: every loss gradient matches finite differences of the float64 reference (${isas.join(', ')})`, async () => {
    const rng = new Rng(99);
    for (const isa of isas) {
      await withRuntime(isa, 2, () => {
        for (const c of GRAD_CASES) {
          const logits = separatedLogits(rng, c.T, c.E);
          const L = c.T % 2 === 0 ? c.T / 2 : c.T;
          const o: RouteOptions = {
            ...c.o,
            aux: { loadBalance: 0.3, zLoss: 0.2, importance: 0.5, sequenceBalance: 0.4, sequenceLength: L, gradients: true },
          };
          const plan = route(logits, o);
          const fixed = { expertIds: plan.expertIds, k: plan.k };
          for (const name of LOSSES) {
            const fd = finiteDifference((x) => lossesRef(x, c.T, c.E, o, fixed)[name], logits.data);
            const g = plan.aux[name]!.grad!;
            const err = relError(g, fd);
            const scale = Math.sqrt(fd.reduce((a, b) => a + b * b, 0));
            // Absolute floor for gradients that vanish (e.g. importance under a constant gate).
            assert.ok(
              err < 2e-4 || (scale < 1e-9 && Math.max(...g.map(Math.abs)) < 1e-6),
              `[${isa}] ${c.name}: ${name} gradient rel. error ${err.toExponential(2)} (‖fd‖ = ${scale.toExponential(2)})`,
            );
          }
        }
      });
    }
  });

  test(`routeBackward: weight gradients match finite differences of the float64 reference (${isas.join(', ')})`, async () => {
    const rng = new Rng(100);
    for (const isa of isas) {
      await withRuntime(isa, 2, async () => {
        for (const c of GRAD_CASES) {
          const logits = separatedLogits(rng, c.T, c.E);
          const plan = route(logits, c.o);
          const gw = rng.floats(plan.expertIds.length);
          const fixed = { expertIds: plan.expertIds, k: plan.k };
          const fd = finiteDifference((x) => weightedSumRef(x, c.T, c.E, c.o, fixed, gw), logits.data);
          const g = routeBackward(logits, plan, gw, c.o);
          assert.deepEqual(g.shape, [c.T, c.E]);
          const scale = Math.sqrt(fd.reduce((a, b) => a + b * b, 0));
          const err = relError(g.data, fd);
          assert.ok(
            err < 2e-4 || (scale < 1e-9 && Math.max(...g.data.map(Math.abs)) === 0),
            `[${isa}] ${c.name}: rel. error ${err.toExponential(2)} (‖fd‖ = ${scale.toExponential(2)})`,
          );
          const ga = await routeBackwardAsync(logits, plan, gw, c.o);
          assert.deepEqual(Array.from(ga.data), Array.from(g.data), 'async = sync');
        }
      });
    }
  });
}

test('routeBackward: results do not depend on the thread count', async () => {
  const rng = new Rng(101);
  const logits = randLogits(rng, 300, 64);
  const o: RouteOptions = { k: 6, renormalize: false, jitter: 0.05, seed: 3 };
  const plan = route(logits, o);
  const gw = rng.floats(300 * 6);
  const a = await withRuntime(info().isa, 1, () => routeBackward(logits, plan, gw, o).data);
  const b = await withRuntime(info().isa, 2, () => routeBackward(logits, plan, gw, o).data);
  assert.deepEqual(Buffer.from(a.buffer), Buffer.from(b.buffer));
});

// ---- specific behaviour ------------------------------------------------------

test('route: ties go to the lower expert index (and the lower group, and the lower token)', () => {
  const E = 8;
  const flat = { data: new Float32Array(2 * E), shape: [2, E] };
  assert.deepEqual(Array.from(route(flat, { k: 3 }).expertIds), [0, 1, 2, 0, 1, 2]);
  assert.deepEqual(Array.from(route(flat, { k: 3, score: 'sigmoid' }).expertIds), [0, 1, 2, 0, 1, 2]);
  assert.deepEqual(Array.from(route(flat, { k: 2, scoreBeforeTopK: false }).expertIds), [0, 1, 0, 1]);
  // Two groups tie on their best score: the lower group wins; inside it the lower expert.
  const g = { data: Float32Array.from([0, 5, 0, 0, 0, 5, 0, 0]), shape: [1, 8] };
  assert.deepEqual(Array.from(route(g, { k: 2, groups: 2, topkGroups: 1 }).expertIds), [1, 0]);
  assert.deepEqual(Array.from(route(g, { k: 2, groups: 2, topkGroups: 1, groupScore: 'sum-top2' }).expertIds), [1, 0]);
  // −0 and +0 are equal scores.
  const z = { data: Float32Array.from([-0, 0, -0, 0]), shape: [1, 4] };
  assert.deepEqual(Array.from(route(z, { k: 4, score: 'none' }).expertIds), [0, 1, 2, 3]);
  // Expert choice: an expert prefers the earlier of equal tokens.
  const ec = route({ data: new Float32Array(4 * 2), shape: [4, 2] }, { mode: 'expert-choice', capacityFactor: 1 });
  assert.equal(ec.capacity, 2);
  assert.deepEqual(Array.from(ec.sortedSlots), [0, 2, 1, 3]); // tokens 0 and 1 take both experts
  assert.deepEqual(Array.from(ec.expertIds), [0, 1, 0, 1, -1, -1, -1, -1]);
});

test('route: capacity overflow keeps first choices first (position) or the best scores (score)', () => {
  // 6 tokens all prefer expert 0, then expert 1 (k = 2, E = 4): C = ceil(2·6·1/4) = 3.
  const T = 6;
  const E = 4;
  const d = new Float32Array(T * E);
  for (let t = 0; t < T; t++) d.set([3 + 0.1 * t, 2 - 0.1 * t, 0, 0], t * E);
  const logits = { data: d, shape: [T, E] };
  const pos = route(logits, { k: 2, capacityFactor: 1 });
  assert.equal(pos.capacity, 3);
  assert.deepEqual(Array.from(pos.tokensPerExpert), [3, 3, 0, 0]);
  assert.deepEqual(Array.from(pos.sortedSlots), [0, 2, 4, 1, 3, 5]);
  assert.deepEqual(Array.from(pos.dropped), [6, 7, 8, 9, 10, 11]);
  const sc = route(logits, { k: 2, capacityFactor: 1, dropPolicy: 'score' });
  // Expert 0's score grows with t, expert 1's shrinks: keep the last 3 on expert 0, the first 3 on expert 1.
  assert.deepEqual(Array.from(sc.sortedSlots), [6, 8, 10, 1, 3, 5]);
  assert.deepEqual(Array.from(sc.dropped), [0, 2, 4, 7, 9, 11]);
  // Position priority is by rank first: 1st choices of late tokens beat 2nd choices of early ones.
  const d2 = new Float32Array(T * E);
  for (let t = 0; t < T; t++) d2.set(t < 3 ? [3, 2, 0, -1] : [2, 3, 0, -1], t * E);
  const r = route({ data: d2, shape: [T, E] }, { k: 2, capacityFactor: 1 });
  // Expert 0 holds slots 0, 2, 4 (1st choices) and 7, 9, 11 (2nd); expert 1 the reverse.
  assert.deepEqual(Array.from(r.sortedSlots), [0, 2, 4, 6, 8, 10]);
  assert.deepEqual(Array.from(r.dropped), [1, 3, 5, 7, 9, 11]);
});

test('route: capacity formula ceil(k·T·f/E) in float64, clamped to [1, T]', () => {
  const rng = new Rng(5);
  for (const [T, E, k, f] of [
    [10, 11, 1, 1.1],
    [4096, 8, 2, 1.25],
    [7, 64, 1, 0.01],
    [5, 2, 2, 3],
    [1000, 60, 4, 1.0000001],
  ]) {
    const p = route(randLogits(rng, T, E), { k, capacityFactor: f });
    assert.equal(p.capacity, refCapacity('top-k', T, E, k, f), `T=${T} E=${E} k=${k} f=${f}`);
    assert.equal(p.capacity, Math.min(T, Math.max(1, Math.ceil((k * T * f) / E))));
  }
  const ec = route(randLogits(rng, 10, 4), { mode: 'expert-choice', capacityFactor: 0.9 });
  assert.equal(ec.capacity, Math.ceil((10 * 0.9) / 4));
  assert.equal(route(randLogits(rng, 3, 4), { k: 2 }).capacity, 0);
});

test('route: expert choice with T < E gives every expert a token and tokens many experts', () => {
  const rng = new Rng(6);
  const p = route(randLogits(rng, 3, 16), { mode: 'expert-choice', capacityFactor: 1 });
  assert.equal(p.capacity, 1);
  assert.deepEqual(Array.from(p.tokensPerExpert), new Array(16).fill(1));
  assert.equal(p.sortedSlots.length, 16);
  let used = 0;
  for (const e of p.expertIds) if (e >= 0) used++;
  assert.equal(used, 16);
  assert.ok(p.k >= 6, 'some token took at least ⌈16/3⌉ experts');
  checkPlanInvariants(p, { mode: 'expert-choice' });
});

test('route: GShard drops the 2nd expert with probability 1 − 2·g2 and reproducibly per seed', () => {
  const rng = new Rng(8);
  const T = 4000;
  const logits = randLogits(rng, T, 8, 1);
  const o: RouteOptions = { k: 2, renormalize: true, randomSecondExpert: true, seed: 11 };
  const p = route(logits, o);
  let expected = 0;
  for (let t = 0; t < T; t++) expected += 1 - Math.min(1, 2 * p.weights[t * 2 + 1]);
  assert.ok(Math.abs(p.dropped.length - expected) < 4 * Math.sqrt(expected), `${p.dropped.length} vs ${expected}`);
  for (const s of p.dropped) assert.equal(s % 2, 1, 'only 2nd experts are dropped');
  assert.deepEqual(route(logits, o).dropped, p.dropped);
  assert.notDeepEqual(route(logits, { ...o, seed: 12 }).dropped, p.dropped);
});

test('route: noise and jitter are seeded: same seed same plan, another seed another plan', () => {
  const rng = new Rng(9);
  const logits = randLogits(rng, 64, 16, 0.5);
  const noiseLogits = { data: rng.floats(64 * 16, 1), shape: [64, 16] };
  for (const o of [{ k: 2, noiseLogits }, { k: 2, jitter: 0.3 }] as RouteOptions[]) {
    const a = route(logits, { ...o, seed: 1 });
    const b = route(logits, { ...o, seed: 1 });
    const c = route(logits, { ...o, seed: 2 });
    assert.deepEqual(a.weights, b.weights);
    assert.notDeepEqual(a.weights, c.weights);
    assert.notDeepEqual(a.weights, route(logits, { k: 2 }).weights);
  }
});

test('route: hash routing is deterministic per token id and balanced', () => {
  const T = 20000;
  const E = 16;
  const ids = Int32Array.from({ length: T }, (_, i) => i);
  const logits = { data: new Float32Array(T * E), shape: [T, E] };
  const p = route(logits, { mode: 'hash', tokenIds: ids, score: 'none' });
  const mean = T / E;
  for (const c of p.tokensPerExpert) assert.ok(Math.abs(c - mean) < 5 * Math.sqrt(mean), `expert load ${c} vs ${mean}`);
  assert.ok(p.weights.every((w) => w === 1), 'no gate: weight 1');
  // The same id always goes to the same expert, wherever it appears.
  const rev = Int32Array.from(ids).reverse();
  const q = route(logits, { mode: 'hash', tokenIds: rev, score: 'none' });
  for (let t = 0; t < T; t++) assert.equal(q.expertIds[t], p.expertIds[T - 1 - t]);
  const two = route(logits, { mode: 'hash', tokenIds: ids, k: 2 });
  for (let t = 0; t < 100; t++) assert.equal(two.expertIds[2 * t + 1], (two.expertIds[2 * t] + 1) % E);
});

test('route: the DeepSeek-V3 selection bias steers selection but not the weights', () => {
  const rng = new Rng(10);
  const E = 16;
  const logits = randLogits(rng, 20, E);
  const bias = new Float32Array(E);
  bias[5] = 10; // expert 5 is always chosen
  const o: RouteOptions = { k: 2, score: 'sigmoid', renormalize: false };
  const p = route(logits, { ...o, selectionBias: bias });
  for (let t = 0; t < 20; t++) {
    assert.equal(p.expertIds[2 * t], 5);
    const want = 1 / (1 + Math.exp(-logits.data[t * E + 5]));
    assert.ok(Math.abs(p.weights[2 * t] - want) < 1e-6, 'weight from the unbiased score');
  }
});

test('updateSelectionBias: sign update toward the mean load, input untouched', () => {
  const bias = Float32Array.from([0.5, -0.25, 0, 1]);
  const copy = bias.slice();
  const out = updateSelectionBias(bias, Int32Array.from([10, 2, 6, 6]), 0.001);
  assert.deepEqual(Array.from(out), Array.from(Float32Array.from([0.5 - 0.001, -0.25 + 0.001, 0, 1])));
  assert.deepEqual(bias, copy);
  // Balancing loop: a biased router becomes balanced.
  const rng = new Rng(11);
  const E = 8;
  const T = 512;
  let b: Float32Array = new Float32Array(E);
  const logits = randLogits(rng, T, E, 0.5);
  for (let i = 0; i < E; i++) for (let t = 0; t < T; t++) logits.data[t * E + i] += i * 0.1;
  const spread = (p: RoutingPlan) => Math.max(...p.tokensPerExpert) - Math.min(...p.tokensPerExpert);
  const before = spread(route(logits, { k: 2, score: 'sigmoid' }));
  for (let step = 0; step < 300; step++) b = updateSelectionBias(b, route(logits, { k: 2, score: 'sigmoid', selectionBias: b }).tokensPerExpert, 0.01);
  const after = spread(route(logits, { k: 2, score: 'sigmoid', selectionBias: b }));
  assert.ok(after < before / 4, `load spread ${before} → ${after}`);
});

test('routingPresets: every preset is a frozen plain object naming the model settings', () => {
  const names = ['switch', 'gshard', 'mixtral', 'qwen2-moe', 'qwen3-moe', 'deepseek-v2', 'deepseek-v3', 'expert-choice', 'hash'];
  assert.deepEqual(Object.keys(routingPresets).sort(), [...names].sort());
  for (const n of names) assert.ok(Object.isFrozen(routingPresets[n as keyof typeof routingPresets]));
  assert.equal(routingPresets.mixtral.k, 2);
  assert.equal(routingPresets.mixtral.renormalize, true);
  assert.equal(routingPresets['qwen2-moe'].renormalize, false);
  assert.equal(routingPresets['qwen3-moe'].k, 8);
  assert.deepEqual(
    [routingPresets['deepseek-v2'].groups, routingPresets['deepseek-v2'].topkGroups, routingPresets['deepseek-v2'].scalingFactor],
    [8, 3, 16],
  );
  assert.deepEqual(
    [routingPresets['deepseek-v3'].score, routingPresets['deepseek-v3'].groupScore, routingPresets['deepseek-v3'].scalingFactor],
    ['sigmoid', 'sum-top2', 2.5],
  );
  // Spreading and overriding works.
  const rng = new Rng(12);
  const p = route(randLogits(rng, 10, 8), { ...routingPresets.mixtral, k: 3 });
  assert.equal(p.k, 3);
});

test('route: inputs are never modified; results are plain typed arrays', async () => {
  const rng = new Rng(13);
  const logits = randLogits(rng, 20, 16);
  const bias = rng.floats(16);
  const noise = rng.floats(320);
  const copies = [logits.data.slice(), bias.slice(), noise.slice()];
  const o: RouteOptions = { k: 2, selectionBias: bias, noiseLogits: noise, aux: { loadBalance: 1, gradients: true } };
  const p = route(logits, o);
  await routeAsync(logits, o);
  routeBackward(logits, p, new Float32Array(40).fill(1), o);
  assert.deepEqual([logits.data, bias, noise], copies);
  assert.ok(p.expertIds instanceof Int32Array && p.weights instanceof Float32Array);
  assert.equal(p.aux.loadBalance!.grad!.length, 20 * 16);
});

test('route plans feed the experts ops: permute/combine over kept slots (top-k with drops, expert choice with padding)', () => {
  const rng = new Rng(15);
  const T = 40;
  const E = 8;
  const d = 5;
  const x = randLogits(rng, T, d, 1);
  const logits = randLogits(rng, T, E);
  for (const o of [
    { k: 2, capacityFactor: 0.5, renormalize: true },
    { ...routingPresets.gshard, seed: 3 },
    { mode: 'expert-choice', capacityFactor: 1.5 },
    { mode: 'expert-choice', capacityFactor: 0.25, renormalize: true },
  ] as RouteOptions[]) {
    const plan = route(logits, o);
    const xs = permute(x, plan);
    assert.equal(xs.shape[0], plan.sortedSlots.length);
    const y = combine(xs, plan);
    const kept = new Set(plan.sortedSlots);
    for (let t = 0; t < T; t++) {
      let w = 0;
      for (let j = 0; j < plan.k; j++) if (kept.has(t * plan.k + j)) w += plan.weights[t * plan.k + j];
      for (let c = 0; c < d; c++) {
        const want = w * x.data[t * d + c];
        assert.ok(Math.abs(y.data[t * d + c] - want) < 1e-5, `${JSON.stringify(o)} token ${t}`);
      }
    }
  }
});

test('routeAsync: concurrent calls all resolve to the sync result', async () => {
  const rng = new Rng(14);
  const cases = Array.from({ length: 8 }, (_, i) => ({
    logits: randLogits(rng, 50 + i, 32),
    o: (i % 2 ? { k: 4, capacityFactor: 1 } : { mode: 'expert-choice', capacityFactor: 2 }) as RouteOptions,
  }));
  const got = await Promise.all(cases.map((c) => routeAsync(c.logits, c.o)));
  cases.forEach((c, i) => assert.deepEqual(got[i], route(c.logits, c.o)));
});

test('route: random valid options always give a consistent plan (fast-check)', () => {
  fc.assert(
    fc.property(
      fc.record({
        T: fc.integer({ min: 1, max: 40 }),
        groups: fc.constantFrom(1, 2, 4),
        per: fc.integer({ min: 1, max: 6 }),
        mode: fc.constantFrom('top-k', 'top-k', 'expert-choice', 'hash'),
        score: fc.constantFrom('softmax', 'sigmoid', 'none'),
        before: fc.boolean(),
        renorm: fc.boolean(),
        useGroups: fc.boolean(),
        sumTop2: fc.boolean(),
        cap: fc.constantFrom(0, 0.25, 1, 1.5, 4),
        policy: fc.constantFrom('position', 'score'),
        seed: fc.nat(),
        ties: fc.boolean(),
      }),
      (r) => {
        const E = r.groups * r.per;
        const rng = new Rng(r.seed);
        const logits = r.ties ? tiedLogits(rng, r.T, E) : randLogits(rng, r.T, E);
        const o: RouteOptions = { mode: r.mode as RouteOptions['mode'], score: r.score as RouteOptions['score'], seed: r.seed };
        if (r.renorm && r.score !== 'none') o.renormalize = true;
        if (r.mode === 'expert-choice') {
          o.capacityFactor = r.cap || 1;
        } else {
          o.k = 1 + (r.seed % E);
          if (r.cap) Object.assign(o, { capacityFactor: r.cap, dropPolicy: r.policy });
          if (r.mode === 'hash') o.tokenIds = Int32Array.from({ length: r.T }, () => rng.int(0, 1000));
          else {
            o.scoreBeforeTopK = r.before;
            if (r.useGroups && r.groups > 1 && !(r.sumTop2 && r.per < 2)) {
              const M = 1 + (r.seed % r.groups);
              Object.assign(o, { groups: r.groups, topkGroups: M, groupScore: r.sumTop2 ? 'sum-top2' : 'max' });
              o.k = 1 + (r.seed % (M * r.per));
            }
          }
        }
        const p = route(logits, o);
        checkPlanInvariants(p, o);
        const ref = routeRef(logits.data, r.T, E, o);
        assert.deepEqual(p.expertIds, ref.expertIds);
        assert.deepEqual(p.sortedSlots, ref.sortedSlots);
        assert.deepEqual(p.dropped, ref.dropped);
      },
    ),
    { numRuns: 300 },
  );
});

// ---- bad inputs ----------------------------------------------------------------

type AnyFn = (...a: unknown[]) => unknown;
const L = () => ({ data: new Float32Array(4 * 8), shape: [4, 8] });

function routeBadCases(fn: AnyFn, fname: string): BadCase[] {
  const T = TypeError;
  const R = RangeError;
  const nan = L();
  nan.data[13] = NaN;
  const inf = L();
  inf.data[3] = -Infinity;
  const cases: [string, unknown[], typeof TypeError, RegExp][] = [
    ['logits missing', [undefined], T, /logits must be a tensor/],
    ['logits a Float32Array', [new Float32Array(8)], T, /logits must be a tensor/],
    ['logits.data Float64Array', [{ data: new Float64Array(32), shape: [4, 8] }], T, /logits\.data must be a Float32Array/],
    ['logits rank 1', [{ data: new Float32Array(8), shape: [8] }], R, /logits\.shape must have 2 dimensions/],
    ['logits length mismatch', [{ data: new Float32Array(31), shape: [4, 8] }], R, /logits\.data has 31 elements/],
    ['logits NaN', [nan, { k: 2 }], R, /logits must be finite: element 13 \(token 1, expert 5\) is NaN/],
    ['logits -Infinity', [inf, { k: 2 }], R, /logits must be finite: element 3 .* is -Infinity/],
    ['options a string', [L(), 'mixtral'], T, /options must be an object/],
    ['mode unknown', [L(), { mode: 'topk' }], R, /mode must be one of top-k\|expert-choice\|hash, got 'topk'/],
    ['mode a number', [L(), { mode: 1 }], T, /mode must be a string/],
    ['score unknown', [L(), { score: 'relu' }], R, /score must be one of softmax\|sigmoid\|none/],
    ['k > E', [L(), { k: 9 }], R, /k must be ≤ experts: k = 9 but logits have 8 experts/],
    ['k = 0', [L(), { k: 0 }], R, /k must be ≥ 1/],
    ['k fractional', [L(), { k: 1.5 }], R, /k must be an integer/],
    ['k a string', [L(), { k: '2' }], T, /k must be an integer/],
    ['scoreBeforeTopK a string', [L(), { scoreBeforeTopK: 'yes' }], T, /scoreBeforeTopK must be a boolean/],
    ['renormalize with score none', [L(), { score: 'none', renormalize: true }], R, /renormalize needs score 'softmax' or 'sigmoid'/],
    ['scalingFactor NaN', [L(), { scalingFactor: NaN }], R, /scalingFactor must be finite/],
    ['scalingFactor a string', [L(), { scalingFactor: '2' }], T, /scalingFactor must be a number/],
    ['bias wrong length', [L(), { selectionBias: new Float32Array(7) }], R, /selectionBias has 7 elements but must have 8/],
    ['bias Float64Array', [L(), { selectionBias: new Float64Array(8) }], T, /selectionBias must be a Float32Array/],
    ['bias NaN', [L(), { selectionBias: new Float32Array(8).fill(NaN) }], R, /selectionBias must be finite/],
    ['groups not dividing E', [L(), { groups: 3, topkGroups: 1 }], R, /experts \(8\) must be divisible by groups \(3\)/],
    ['groups without topkGroups', [L(), { groups: 2 }], T, /topkGroups must be an integer when groups is given/],
    ['topkGroups > groups', [L(), { groups: 2, topkGroups: 3 }], R, /topkGroups \(3\) must be ≤ groups \(2\)/],
    ['topkGroups without groups', [L(), { topkGroups: 2 }], R, /topkGroups needs groups/],
    ['groupScore unknown', [L(), { groups: 2, topkGroups: 1, groupScore: 'mean' }], R, /groupScore must be one of max\|sum-top2/],
    ['sum-top2 with 1 per group', [L(), { groups: 8, topkGroups: 2, groupScore: 'sum-top2' }], R, /sum-top2' needs ≥ 2 experts per group/],
    ['k beyond the kept groups', [L(), { k: 5, groups: 4, topkGroups: 2 }], R, /k \(5\) exceeds the 4 experts in topkGroups/],
    ['noiseLogits wrong size', [L(), { noiseLogits: new Float32Array(31) }], R, /noiseLogits has 31 elements but must have 32/],
    ['noiseLogits Infinity', [L(), { noiseLogits: new Float32Array(32).fill(Infinity) }], R, /noiseLogits must be finite/],
    ['jitter ≥ 1', [L(), { jitter: 1 }], R, /jitter must be in \[0, 1\)/],
    ['jitter negative', [L(), { jitter: -0.1 }], R, /jitter must be in \[0, 1\)/],
    ['seed negative', [L(), { seed: -1 }], R, /seed must be an integer in \[0, 2\^53−1\]/],
    ['seed fractional', [L(), { seed: 0.5 }], R, /seed must be an integer/],
    ['seed a bigint', [L(), { seed: 1n }], T, /seed must be an integer/],
    ['capacityFactor negative', [L(), { capacityFactor: -1 }], R, /capacityFactor must be ≥ 0/],
    ['capacityFactor Infinity', [L(), { capacityFactor: Infinity }], R, /capacityFactor must be finite/],
    ['dropPolicy unknown', [L(), { dropPolicy: 'random' }], R, /dropPolicy must be one of position\|score/],
    ['randomSecondExpert with k=1', [L(), { randomSecondExpert: true }], R, /randomSecondExpert needs k = 2/],
    ['randomSecondExpert not boolean', [L(), { k: 2, randomSecondExpert: 1 }], T, /randomSecondExpert must be a boolean/],
    ['hash without tokenIds', [L(), { mode: 'hash' }], T, /tokenIds must be an Int32Array \[tokens\] for mode 'hash', got undefined/],
    ['hash tokenIds wrong length', [L(), { mode: 'hash', tokenIds: new Int32Array(3) }], R, /tokenIds has 3 elements but logits have 4 tokens/],
    ['hash tokenIds Uint32Array', [L(), { mode: 'hash', tokenIds: new Uint32Array(4) }], T, /tokenIds must be a Int32Array/],
    ['hash with selectionBias', [L(), { mode: 'hash', tokenIds: new Int32Array(4), selectionBias: new Float32Array(8) }], R, /selectionBias is not used by mode 'hash'/],
    ['hash with jitter', [L(), { mode: 'hash', tokenIds: new Int32Array(4), jitter: 0.1 }], R, /jitter is not used by mode 'hash'/],
    ['tokenIds in top-k mode', [L(), { tokenIds: new Int32Array(4) }], R, /tokenIds is not used by mode 'top-k'/],
    ['expert choice without capacity', [L(), { mode: 'expert-choice' }], R, /mode 'expert-choice' needs capacityFactor > 0/],
    ['expert choice with k', [L(), { mode: 'expert-choice', capacityFactor: 1, k: 2 }], R, /k is not used by mode 'expert-choice'/],
    ['expert choice with groups', [L(), { mode: 'expert-choice', capacityFactor: 1, groups: 2, topkGroups: 1 }], R, /groups is not used by mode 'expert-choice'/],
    ['expert choice with dropPolicy', [L(), { mode: 'expert-choice', capacityFactor: 1, dropPolicy: 'score' }], R, /dropPolicy is not used by mode 'expert-choice'/],
    ['expert choice scoring after', [L(), { mode: 'expert-choice', capacityFactor: 1, scoreBeforeTopK: false }], R, /scoreBeforeTopK: false is only meaningful in mode 'top-k'/],
    ['aux a number', [L(), { aux: 1 }], T, /aux must be an object/],
    ['aux coefficient negative', [L(), { aux: { loadBalance: -1 } }], R, /aux\.loadBalance \(a loss coefficient\) must be ≥ 0/],
    ['aux coefficient a string', [L(), { aux: { zLoss: 'x' } }], T, /aux\.zLoss must be a number/],
    ['aux sequenceLength alone', [L(), { aux: { sequenceLength: 2 } }], R, /aux\.sequenceLength needs aux\.sequenceBalance/],
    ['aux sequenceLength not dividing T', [L(), { aux: { sequenceBalance: 1, sequenceLength: 3 } }], R, /tokens \(4\) must be a multiple of aux\.sequenceLength \(3\)/],
    ['aux gradients not boolean', [L(), { aux: { zLoss: 1, gradients: 1 } }], T, /aux\.gradients must be a boolean/],
  ];
  return cases.map(([label, args, error, message]) => ({
    label,
    call: () => fn(...args),
    error,
    message: new RegExp(`^${fname}: .*` + message.source),
  }));
}

checkBadInputs('route', routeBadCases(route as AnyFn, 'route'));
checkBadInputs('routeAsync', routeBadCases(routeAsync as AnyFn, 'routeAsync'));
checkBadInputs('raw binding route', routeBadCases(native.route as AnyFn, 'route'));

function backwardBadCases(fn: AnyFn, fname: string): BadCase[] {
  const plan = route(L(), { k: 2 });
  const gw = new Float32Array(8);
  const badIds = Int32Array.from(plan.expertIds);
  badIds[3] = 8;
  const dupIds = Int32Array.from(plan.expertIds);
  dupIds[1] = dupIds[0];
  const cases: [string, unknown[], typeof TypeError, RegExp][] = [
    ['plan missing', [L(), undefined, gw, { k: 2 }], TypeError, /plan must be the RoutingPlan/],
    ['plan.k missing', [L(), { expertIds: plan.expertIds }, gw, { k: 2 }], TypeError, /plan\.k must be an integer/],
    ['plan.expertIds wrong length', [L(), { expertIds: new Int32Array(7), k: 2 }, gw, { k: 2 }], RangeError, /plan\.expertIds has 7 elements but tokens·plan\.k = 8/],
    ['expert out of range', [L(), { expertIds: badIds, k: 2 }, gw, { k: 2 }], RangeError, /plan\.expertIds\[3\] = 8 is not an expert/],
    ['expert repeated', [L(), { expertIds: dupIds, k: 2 }, gw, { k: 2 }], RangeError, /plan\.expertIds repeats expert/],
    ['gradWeights wrong length', [L(), plan, new Float32Array(7), { k: 2 }], RangeError, /gradWeights has 7 elements but must have 8/],
    ['gradWeights Int32Array', [L(), plan, new Int32Array(8), { k: 2 }], TypeError, /gradWeights must be a Float32Array/],
    ['options.k mismatch', [L(), plan, gw, { k: 1 }], RangeError, /plan\.k \(2\) does not match options\.k \(1\)/],
    ['options invalid', [L(), plan, gw, { k: 2, score: 'x' }], RangeError, /score must be one of/],
  ];
  return cases.map(([label, args, error, message]) => ({
    label,
    call: () => fn(...args),
    error,
    message: new RegExp(`^${fname}: .*` + message.source),
  }));
}

checkBadInputs('routeBackward', backwardBadCases(routeBackward as AnyFn, 'routeBackward'));
checkBadInputs('routeBackwardAsync', backwardBadCases(routeBackwardAsync as AnyFn, 'routeBackwardAsync'));
checkBadInputs('updateSelectionBias', [
  ['bias a number', [1, new Int32Array(1), 0.1], TypeError, /bias must be a Float32Array/],
  ['bias empty', [new Float32Array(0), new Int32Array(0), 0.1], RangeError, /bias must have ≥ 1 element/],
  ['loads wrong length', [new Float32Array(4), new Int32Array(3), 0.1], RangeError, /tokensPerExpert has 3 elements but bias has 4/],
  ['loads negative', [new Float32Array(2), Int32Array.from([1, -1]), 0.1], RangeError, /tokensPerExpert\[1\] = -1 is negative/],
  ['gamma negative', [new Float32Array(2), new Int32Array(2), -1], RangeError, /gamma .* must be ≥ 0/],
  ['gamma missing', [new Float32Array(2), new Int32Array(2)], TypeError, /gamma must be a number/],
].map(([label, args, error, message]) => ({
  label: label as string,
  call: () => (updateSelectionBias as AnyFn)(...(args as unknown[])),
  error: error as typeof TypeError,
  message: new RegExp('^updateSelectionBias: .*' + (message as RegExp).source),
})));

test('raw routing bindings survive arbitrary garbage (fast-check): only TypeError/RangeError, never a crash', () => {
  const tensorish = fc.oneof(
    fc.anything(),
    fc.record({
      data: fc.oneof(fc.float32Array({ maxLength: 40 }), fc.int32Array({ maxLength: 8 })),
      shape: fc.array(fc.oneof(fc.integer({ min: -2, max: 9 }), fc.double()), { maxLength: 3 }),
    }),
  );
  const opt = fc.record(
    {
      mode: fc.oneof(fc.constantFrom('top-k', 'expert-choice', 'hash'), fc.anything()),
      score: fc.oneof(fc.constantFrom('softmax', 'sigmoid', 'none'), fc.anything()),
      k: fc.oneof(fc.integer({ min: -2, max: 10 }), fc.double(), fc.anything()),
      scoreBeforeTopK: fc.anything(),
      renormalize: fc.anything(),
      scalingFactor: fc.oneof(fc.double(), fc.anything()),
      selectionBias: fc.oneof(fc.float32Array({ maxLength: 10 }), tensorish),
      groups: fc.oneof(fc.integer({ min: -1, max: 9 }), fc.anything()),
      topkGroups: fc.oneof(fc.integer({ min: -1, max: 9 }), fc.anything()),
      groupScore: fc.oneof(fc.constantFrom('max', 'sum-top2'), fc.anything()),
      noiseLogits: fc.oneof(fc.float32Array({ maxLength: 40 }), tensorish),
      jitter: fc.oneof(fc.double(), fc.anything()),
      seed: fc.oneof(fc.double(), fc.anything()),
      capacityFactor: fc.oneof(fc.double({ min: -1, max: 5 }), fc.anything()),
      dropPolicy: fc.oneof(fc.constantFrom('position', 'score'), fc.anything()),
      randomSecondExpert: fc.anything(),
      tokenIds: fc.oneof(fc.int32Array({ maxLength: 8 }), fc.anything()),
      aux: fc.oneof(
        fc.anything(),
        fc.record(
          {
            loadBalance: fc.oneof(fc.double(), fc.anything()),
            zLoss: fc.double(),
            importance: fc.double(),
            sequenceBalance: fc.double(),
            sequenceLength: fc.oneof(fc.integer({ min: -1, max: 5 }), fc.anything()),
            gradients: fc.anything(),
          },
          { requiredKeys: [] },
        ),
      ),
    },
    { requiredKeys: [] },
  );
  const logits = fc.oneof(
    tensorish,
    fc.integer({ min: 1, max: 5 }).chain((T) =>
      fc.integer({ min: 1, max: 8 }).chain((E) =>
        fc.record({ data: fc.float32Array({ minLength: T * E, maxLength: T * E }), shape: fc.constant([T, E]) }),
      ),
    ),
  );
  const fns = [native.route, native.routeBackward, native.updateSelectionBias] as AnyFn[];
  fc.assert(
    fc.property(fc.nat(fns.length - 1), logits, opt, fc.anything(), (fi, l, o, extra) => {
      try {
        if (fi === 0) fns[0](l, o);
        else if (fi === 1) fns[1](l, extra, (l as { data?: unknown })?.data, o);
        else fns[2](l, extra, o);
        return true;
      } catch (e) {
        return e instanceof TypeError || e instanceof RangeError;
      }
    }),
    { numRuns: 3000 },
  );
});
