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
      // options.out: the same values, written into the caller's buffer (whatever it held)
      for (const run of [(o: Float32Array) => layer.forward(x, { out: o }), (o: Float32Array) => layer.forwardAsync(x, { out: o })]) {
        const buf = new Float32Array(T * 16).fill(Number.NaN);
        const r = await run(buf);
        assert.equal(r.y.data, buf, `${name} T=${T}: y.data is options.out`);
        assert.deepEqual(Array.from(buf), Array.from(out.y.data), `${name} T=${T}: forward with out differs`);
      }
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

test('MoELayer: bad configs and inputs give named errors', async () => {
  const { layer } = build('mixtral', 1);
  assert.throws(() => layer.forward({ data: new Float32Array(15), shape: [1, 15] }), /MoELayer: forward: x\.shape\[1\] = 15 must equal dModel = 16/);
  assert.throws(() => layer.forward('x' as never), TypeError);
  const x1 = { data: new Float32Array(32), shape: [2, 16] };
  assert.throws(() => layer.forward(x1, { out: new Float64Array(32) as never }), (e: unknown) => e instanceof TypeError && /options\.out must be a Float32Array/.test(String(e)));
  assert.throws(() => layer.forward(x1, { out: new Float32Array(31) }), /MoELayer: forward: options\.out has 31 floats, y needs 32/);
  assert.throws(() => layer.forward(x1, 5 as never), /options must be an object/);
  assert.throws(() => layer.forward(x1, { out: x1.data }), /options\.out overlaps x\.data/);
  const shared = new Float32Array(64);
  assert.throws(() => layer.forward({ data: shared.subarray(0, 32), shape: [2, 16] }, { out: shared.subarray(16, 48) }), /overlaps/);
  assert.doesNotThrow(() => layer.forward({ data: shared.subarray(0, 32), shape: [2, 16] }, { out: shared.subarray(32, 64) }));
  await assert.rejects(() => layer.forwardAsync(x1, { out: new Float32Array(33) }), RangeError);
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

// ---- checkpoints -------------------------------------------------------------
import { loadSafetensors, saveSafetensors, type TensorToSave } from '../lib/index';

function expertSlices(t: { data: Float32Array; shape: readonly number[] }) {
  const [E, r, c] = t.shape;
  return Array.from({ length: E }, (_, e) => ({ shape: [r, c], data: t.data.slice(e * r * c, (e + 1) * r * c) }));
}

function checkpointFor(preset: 'mixtral' | 'qwen2-moe' | 'qwen3-moe' | 'deepseek-v2' | 'deepseek-v3', L: number, seed: number) {
  const { layer } = build(preset, seed);
  const w = layer.denseWeights;
  const tensors: Record<string, TensorToSave> = {};
  const mix = preset === 'mixtral';
  const base = `model.layers.${L}.${mix ? 'block_sparse_moe' : 'mlp'}.`;
  const n = mix ? { gate: 'w1', up: 'w3', down: 'w2' } : { gate: 'gate_proj', up: 'up_proj', down: 'down_proj' };
  tensors[base + 'gate.weight'] = { shape: w.router.shape, data: w.router.data };
  for (const [key, m] of [['gate', n.gate], ['up', n.up], ['down', n.down]] as const)
    expertSlices(w[key]!).forEach((t, e) => (tensors[`${base}experts.${e}.${m}.weight`] = t));
  if (w.shared) {
    const sb = preset.startsWith('qwen') ? `${base}shared_expert.` : `${base}shared_experts.`;
    tensors[sb + 'gate_proj.weight'] = { shape: w.shared.gate.shape, data: w.shared.gate.data };
    tensors[sb + 'up_proj.weight'] = { shape: w.shared.up.shape, data: w.shared.up.data };
    tensors[sb + 'down_proj.weight'] = { shape: w.shared.down.shape, data: w.shared.down.data };
  }
  if (w.sharedGate) tensors[`${base}shared_expert_gate.weight`] = { shape: w.sharedGate.shape, data: w.sharedGate.data };
  if (w.routerBias) tensors[`${base}gate.e_score_correction_bias`] = { shape: [w.routerBias.length], data: w.routerBias };
  // An unrelated tensor of another layer, as in a real shard.
  tensors['model.layers.0.self_attn.q_proj.weight'] = { dtype: 'BF16', shape: [2, 2], data: new Float32Array(4) };
  return { layer, bytes: saveSafetensors(tensors, { format: 'pt' }), base };
}

for (const preset of ['mixtral', 'qwen2-moe', 'qwen3-moe', 'deepseek-v2', 'deepseek-v3'] as const) {
  test(`MoELayer.fromCheckpoint loads ${preset} tensor names and reproduces the layer bit for bit`, () => {
    const { layer, bytes } = checkpointFor(preset, 3, 77);
    const file = loadSafetensors(bytes);
    const loaded = MoELayer.fromCheckpoint(file, { preset, layer: 3 });
    const x = { data: new Rng(4).floats(5 * 16), shape: [5, 16] };
    assert.deepEqual(Array.from(loaded.forward(x).y.data), Array.from(layer.forward(x).y.data));
    assert.throws(() => MoELayer.fromCheckpoint(file, { preset, layer: 4 }), /tensor 'model\.layers\.4\.(block_sparse_moe|mlp)\.gate\.weight' is missing/);
  });
}

test('MoELayer.fromCheckpoint: a missing expert or a misshaped tensor is named; sharded sources are searched in turn', () => {
  const { bytes, base } = checkpointFor('mixtral', 0, 78);
  const full = loadSafetensors(bytes);
  // Drop expert 5's w3 by re-saving without it.
  const partial: Record<string, TensorToSave> = {};
  const bad: Record<string, TensorToSave> = {};
  for (const name of full.tensors.keys()) {
    const t = full.get(name);
    if (name !== `${base}experts.5.w3.weight`) partial[name] = { shape: t.shape, data: t.data };
    bad[name] = name === `${base}experts.2.w2.weight` ? { shape: [t.shape[1], t.shape[0]], data: t.data } : { shape: t.shape, data: t.data };
  }
  assert.throws(() => MoELayer.fromCheckpoint(loadSafetensors(saveSafetensors(partial)), { preset: 'mixtral', layer: 0 }), /tensor 'model\.layers\.0\.block_sparse_moe\.experts\.5\.w3\.weight' is missing/);
  assert.throws(() => MoELayer.fromCheckpoint(loadSafetensors(saveSafetensors(bad)), { preset: 'mixtral', layer: 0 }), /tensor 'model\.layers\.0\.block_sparse_moe\.experts\.2\.w2\.weight' has shape \[24, 16\], expected \[16, 24\]/);
  // Split the checkpoint in two shards: router + experts 0–3 in one, the rest in the other.
  const a: Record<string, TensorToSave> = {};
  const b: Record<string, TensorToSave> = {};
  for (const name of full.tensors.keys()) {
    const t = full.get(name);
    (/experts\.[4-7]\./.test(name) ? b : a)[name] = { shape: t.shape, data: t.data };
  }
  const sharded = MoELayer.fromCheckpoint([loadSafetensors(saveSafetensors(a)), loadSafetensors(saveSafetensors(b))], { preset: 'mixtral', layer: 0 });
  const single = MoELayer.fromCheckpoint(full, { preset: 'mixtral', layer: 0 });
  const x = { data: new Rng(5).floats(3 * 16), shape: [3, 16] };
  assert.deepEqual(Array.from(sharded.forward(x).y.data), Array.from(single.forward(x).y.data));
  assert.throws(() => MoELayer.fromCheckpoint(full, { preset: 'switch', layer: 0 }), /preset 'switch' has no checkpoint naming scheme/);
  assert.throws(() => MoELayer.fromCheckpoint({} as never, { preset: 'mixtral', layer: 0 }), TypeError);
});
