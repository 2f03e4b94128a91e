import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MoELayer, moePresets, type MoEPresetName, type MoEWeights } from '../lib/index';
import { relError } from './harness';
import { deepseekRef, expertChoiceRef, mixtralRef, qwenRef, switchGshardRef, type RefWeights } from './reference/moe';
import { Rng } from './reference/rng';

interface Built {
  layer: MoELayer;
  ref: (x: Float32Array, T: number) => Float64Array;
}

function t3(data: Float32Array, a: number, b: number, c: number) {
  return { data, shape: [a, b, c] };
}

/** Random weights for a preset, the layer, and its float64 reference. */
function build(name: MoEPresetName, seed: number): Built {
  const rng = new Rng(seed);
  const d = 16, f = 24;
  const E = { switch: 8, gshard: 8, mixtral: 8, 'qwen2-moe': 8, 'qwen3-moe': 16, 'deepseek-v2': 32, 'deepseek-v3': 32, 'expert-choice': 8 }[name];
  const arch = moePresets[name];
  const sc = 1 / Math.sqrt(d);
  const r: RefWeights = { d, f, E, router: rng.floats(E * d, 1), down: rng.floats(E * d * f, 1 / Math.sqrt(f)) };
  const w: MoEWeights = { router: { data: r.router, shape: [E, d] }, down: t3(r.down, E, d, f) };
  if (arch.gated) {
    r.gate = rng.floats(E * f * d, sc);
    r.up = rng.floats(E * f * d, sc);
    w.gate = t3(r.gate, E, f, d);
    w.up = t3(r.up, E, f, d);
  } else {
    r.w1 = rng.floats(E * f * d, sc);
    r.b1 = rng.floats(E * f, 0.1);
    r.b2 = rng.floats(E * d, 0.1);
    w.w1 = t3(r.w1, E, f, d);
    w.b1 = { data: r.b1, shape: [E, f] };
    w.b2 = { data: r.b2, shape: [E, d] };
  }
  const nShared = arch.sharedExperts ?? 0;
  if (nShared) {
    const sf = f * nShared;
    r.shared = { sf, gate: rng.floats(sf * d, sc), up: rng.floats(sf * d, sc), down: rng.floats(d * sf, 1 / Math.sqrt(sf)) };
    w.shared = { gate: { data: r.shared.gate, shape: [sf, d] }, up: { data: r.shared.up, shape: [sf, d] }, down: { data: r.shared.down, shape: [d, sf] } };
    if (arch.sharedExpertGate) {
      r.sharedGate = rng.floats(d, 1);
      w.sharedGate = { data: r.sharedGate, shape: [1, d] };
    }
  }
  if (name === 'deepseek-v3') {
    r.routerBias = rng.floats(E, 0.5);
    w.routerBias = r.routerBias;
  }
  const layer = new MoELayer({ dModel: d, dFF: f, numExperts: E, architecture: name }, w);
  const ref = {
    switch: (x: Float32Array, T: number) => switchGshardRef(x, T, r, 1, 1.25),
    gshard: (x: Float32Array, T: number) => switchGshardRef(x, T, r, 2, 1),
    mixtral: (x: Float32Array, T: number) => mixtralRef(x, T, r, 2),
    'qwen2-moe': (x: Float32Array, T: number) => qwenRef(x, T, r, 4, false),
    'qwen3-moe': (x: Float32Array, T: number) => qwenRef(x, T, r, 8, true),
    'deepseek-v2': (x: Float32Array, T: number) => deepseekRef(x, T, r, { version: 2, k: 6, groups: 8, topkGroups: 3, scaling: 16 }),
    'deepseek-v3': (x: Float32Array, T: number) => deepseekRef(x, T, r, { version: 3, k: 8, groups: 8, topkGroups: 4, scaling: 2.5 }),
    'expert-choice': (x: Float32Array, T: number) => expertChoiceRef(x, T, r, 2),
  }[name];
  return { layer, ref };
}

for (const name of Object.keys(moePresets) as MoEPresetName[]) {
  test(`MoELayer '${name}' matches the float64 reference of the published block (T = 1, 7, 64, 300); async = sync`, async () => {
    const { layer, ref } = build(name, name.length * 101);
    const rng = new Rng(name.length);
    for (const T of [1, 7, 64, 300]) {
      const x = { data: rng.floats(T * 16), shape: [T, 16] };
      const out = layer.forward(x);
      assert.deepEqual(out.y.shape, [T, 16]);
      const err = relError(out.y.data, ref(x.data, T));
      assert.ok(err <= 1e-5, `${name} T=${T}: relative error ${err.toExponential(3)}`);
      const a = await layer.forwardAsync(x);
      assert.deepEqual(Array.from(a.y.data), Array.from(out.y.data), `${name} T=${T}: async differs`);
      assert.equal(out.aux.tokensPerExpert.length, layer.config.numExperts);
    }
  });
}

test("MoELayer 'switch': capacity overflow drops tokens, which pass through as 0", () => {
  const { layer } = build('switch', 5);
  // Identical tokens all pick the same expert: capacity ceil(1.25·T/E) keeps only the first ones.
  const T = 64;
  const row = new Rng(9).floats(16);
  const x = { data: new Float32Array(T * 16), shape: [T, 16] };
  for (let t = 0; t < T; t++) x.data.set(row, t * 16);
  const out = layer.forward(x);
  const C = Math.ceil((1.25 * T) / 8);
  assert.equal(out.aux.droppedSlots, T - C);
  for (let t = 0; t < T; t++) {
    const zero = out.y.data.subarray(t * 16, (t + 1) * 16).every((v) => v === 0);
    assert.equal(zero, t >= C, `token ${t} ${t >= C ? 'should' : 'should not'} be dropped`);
  }
});

test('MoELayer: bad configs and inputs give named errors', () => {
  const { layer } = build('mixtral', 1);
  assert.throws(() => layer.forward({ data: new Float32Array(15), shape: [1, 15] }), /MoELayer: forward: x\.shape\[1\] = 15 must equal dModel = 16/);
  assert.throws(() => layer.forward('x' as never), TypeError);
  const base = { dModel: 4, dFF: 3, numExperts: 2, architecture: 'mixtral' as const };
  const good = {
    router: { data: new Float32Array(8), shape: [2, 4] },
    gate: { data: new Float32Array(24), shape: [2, 3, 4] },
    up: { data: new Float32Array(24), shape: [2, 3, 4] },
    down: { data: new Float32Array(24), shape: [2, 4, 3] },
  };
  assert.doesNotThrow(() => new MoELayer(base, good));
  assert.throws(() => new MoELayer(base, { ...good, up: undefined }), /gated experts need weights 'gate' and 'up'/);
  assert.throws(() => new MoELayer(base, { ...good, down: { data: new Float32Array(24), shape: [2, 3, 4] } }), /weight 'down' has shape \[2, 3, 4\], expected \[2, 4, 3\]/);
  assert.throws(() => new MoELayer({ ...base, architecture: 'nope' as never }, good), /unknown architecture 'nope'/);
  assert.throws(() => new MoELayer({ ...base, dFF: 0 }, good), /config\.dFF must be a positive integer/);
  assert.throws(() => new MoELayer({ ...base, architecture: 'qwen3-moe' }, good), /router k = 8 exceeds numExperts = 2/);
  assert.throws(() => new MoELayer({ ...base, architecture: 'qwen2-moe', router: { k: 2 } }, good), /shared expert\(s\): weights 'shared'/);
  assert.throws(() => new MoELayer(base, { ...good, routerBias: new Float32Array(3) }), /routerBias' must be a Float32Array of 2 values/);
});
