/**
 * Mixture-of-Experts layers composed from sparsekit's kernels:
 *
 *   logits = x·W_routerᵀ                      (linear, prepacked)
 *   plan   = route(logits, router options)     (one fused kernel)
 *   y      = Σ_k w_k · Expert_{e_k}(x)         (permute → grouped GEMMs → combine)
 *          + shared experts (optionally gated by σ(x·w_sg), Qwen2-MoE)
 *
 * Gated experts compute `W2 (act(W1 x) ⊙ W3 x)` (SwiGLU with silu: Mixtral,
 * Qwen, DeepSeek); plain experts `W2 act(W1 x + b1) + b2` (Switch, GShard).
 * Dropped slots contribute nothing: a dropped token's output is 0 and the
 * caller's residual connection carries it (Switch Transformer §2.2).
 */
import { linear, linearAsync, prepackLinear, type ActivationName, type PackedLinear } from './dense';
import {
  combine,
  expertsForward,
  expertsForwardAsync,
  groupedGatedLinear,
  groupedLinear,
  permute,
  prepackExperts,
  prepackGatedExperts,
  type PackedExperts,
} from './experts';
import { route, routeAsync, routingPresets, type RouteOptions, type RoutingPlan, type RoutingPresetName } from './routing';
import type { Float32Tensor } from './tensor';
import { SparseExperts, sparseExpertsForward, sparsePlainExpertsForward, type SparseExpertFormat } from './sparse-experts';

/** Anything that serves named tensors: a SafetensorsFile, or several (sharded checkpoints). */
export interface TensorSource {
  has(name: string): boolean;
  get(name: string): Float32Tensor;
}

export type CheckpointScheme = 'mixtral' | 'qwen' | 'deepseek';

export interface FromCheckpointOptions {
  /** Architecture preset; its checkpoint naming scheme follows (mixtral → Mixtral names, qwen*-moe → Qwen, deepseek-* → DeepSeek). */
  preset: MoEPresetName;
  /** Decoder layer index L in `model.layers.{L}.…`. */
  layer: number;
  /** Name prefix before `layers.{L}` (default `model.`). */
  prefix?: string;
  /** Router overrides and training mode, as in MoEConfig. */
  router?: RouteOptions;
  training?: boolean;
}

export type MoEPresetName =
  | 'switch'
  | 'gshard'
  | 'mixtral'
  | 'qwen2-moe'
  | 'qwen3-moe'
  | 'deepseek-v2'
  | 'deepseek-v3'
  | 'expert-choice';

/** What distinguishes one model's MoE block from another's. */
export interface MoEArchitecture {
  /** Router preset name or explicit options (k, score, groups, capacity, ...). */
  router: RoutingPresetName | RouteOptions;
  /** Gated (SwiGLU/GeGLU) experts, or a plain two-layer FFN. */
  gated: boolean;
  /** Expert activation: on the gate product when gated, on the hidden layer otherwise. */
  activation: ActivationName;
  /** Number of always-on shared experts (DeepSeek: 1–2, Qwen2-MoE: 1). */
  sharedExperts?: number;
  /** Scale the shared expert's output by σ(x·w_sg) per token (Qwen2-MoE). */
  sharedExpertGate?: boolean;
  /** Where the numbers come from. */
  source: string;
}

/**
 * Presets that reproduce published MoE blocks. Each is a plain object: read it,
 * spread it, override what differs.
 */
export const moePresets: Readonly<Record<MoEPresetName, Readonly<MoEArchitecture>>> = Object.freeze({
  switch: {
    router: 'switch',
    gated: false,
    activation: 'relu',
    source: 'Switch Transformer (Fedus et al. 2021): top-1, capacity factor 1.25, T5 ReLU FFN experts; dropped tokens pass through as 0',
  },
  gshard: {
    router: 'gshard',
    gated: false,
    activation: 'relu',
    source: 'GShard (Lepikhin et al. 2020) Algorithm 1: top-2, capacity 2N/E, random 2nd expert; ReLU FFN experts',
  },
  mixtral: {
    router: 'mixtral',
    gated: true,
    activation: 'silu',
    source: 'Mixtral 8x7B (HF MixtralSparseMoeBlock): softmax top-2 renormalised, SwiGLU experts w1/w3/w2',
  },
  'qwen2-moe': {
    router: 'qwen2-moe',
    gated: true,
    activation: 'silu',
    sharedExperts: 1,
    sharedExpertGate: true,
    source: 'Qwen1.5-MoE / Qwen2-MoE (HF Qwen2MoeSparseMoeBlock): softmax top-4, not renormalised, one shared expert gated by sigmoid(x·w_sg)',
  },
  'qwen3-moe': {
    router: 'qwen3-moe',
    gated: true,
    activation: 'silu',
    source: 'Qwen3-MoE (HF Qwen3MoeSparseMoeBlock): softmax top-8 renormalised, no shared expert',
  },
  'deepseek-v2': {
    router: 'deepseek-v2',
    gated: true,
    activation: 'silu',
    sharedExperts: 2,
    source: 'DeepSeek-V2 (config.json, DeepseekV2MoE): softmax, group-limited top-6 (8 groups, top-3), scaling 16, 2 shared experts',
  },
  'deepseek-v3': {
    router: 'deepseek-v3',
    gated: true,
    activation: 'silu',
    sharedExperts: 1,
    source: 'DeepSeek-V3 (config.json, DeepseekV3MoE): sigmoid + e_score_correction_bias, group-limited top-8 (8 groups, top-4), renormalised, scaling 2.5, 1 shared expert',
  },
  'expert-choice': {
    router: 'expert-choice',
    gated: false,
    activation: 'gelu',
    source: 'Expert choice (Zhou et al. 2022): each expert takes its top T·c/E tokens, c = 2; GELU FFN experts',
  },
});

export interface MoEConfig {
  dModel: number;
  /** Hidden size of each routed expert. */
  dFF: number;
  numExperts: number;
  /** A preset's name, or a full architecture. */
  architecture: MoEPresetName | MoEArchitecture;
  /** Router option overrides on top of the architecture's router (e.g. capacityFactor, aux losses). */
  router?: RouteOptions;
  /** Hidden size of all shared experts together (default dFF × sharedExperts). */
  sharedDFF?: number;
  /**
   * Training mode keeps the router's training-only randomness (jitter, noise,
   * GShard's random 2nd expert). Default false: inference, deterministic.
   */
  training?: boolean;
}

/** Weights in checkpoint layouts (no transposes): `[out, in]` per matrix. */
export interface MoEWeights {
  /** `[E, d]` router (gate) projection. */
  router: Float32Tensor;
  /** `[E]` selection bias (DeepSeek-V3 `e_score_correction_bias`). */
  routerBias?: Float32Array;
  /** Gated experts: `[E, dFF, d]` gate (w1 / gate_proj) and up (w3 / up_proj)… */
  gate?: Float32Tensor;
  up?: Float32Tensor;
  /** …or both in one `[E, 2·dFF, d]` stack (gate rows first). */
  gateUp?: Float32Tensor;
  /** Plain experts: `[E, dFF, d]` first layer and optional `[E, dFF]` bias. */
  w1?: Float32Tensor;
  b1?: Float32Tensor;
  /** `[E, d, dFF]` down projection (w2 / down_proj), optional `[E, d]` bias (plain experts). */
  down: Float32Tensor;
  b2?: Float32Tensor;
  /** Shared experts as one gated MLP: `[sharedDFF, d]`, `[sharedDFF, d]`, `[d, sharedDFF]`. */
  shared?: { gate: Float32Tensor; up: Float32Tensor; down: Float32Tensor };
  /** `[1, d]` Qwen2-MoE shared_expert_gate. */
  sharedGate?: Float32Tensor;
}

export interface MoEForwardOptions {
  /**
   * `[T·dModel]` floats to write `y` into (returned as `y.data`): a loop that
   * reuses one buffer allocates nothing proportional to its output per call.
   */
  out?: Float32Array | null;
}

export interface MoEForwardResult {
  /** `[T, d]` */
  y: Float32Tensor;
  plan: RoutingPlan;
  aux: {
    /** Losses requested through the router's `aux` options. */
    losses: RoutingPlan['aux'];
    tokensPerExpert: Int32Array;
    /** Routed slots that were not dispatched (capacity, random drops). */
    droppedSlots: number;
  };
}

function err(msg: string): never {
  throw new RangeError(`MoELayer: ${msg}`);
}

function checkShape(name: string, t: Float32Tensor | undefined, shape: number[]): Float32Tensor {
  if (!t || typeof t !== 'object' || !(t.data instanceof Float32Array) || !Array.isArray(t.shape)) {
    throw new TypeError(`MoELayer: weight '${name}' must be a tensor { data: Float32Array, shape: [${shape.join(', ')}] }`);
  }
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    err(`weight '${name}' has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
  }
  return t;
}

function slice3(t: Float32Tensor, e: number): Float32Array {
  const per = t.shape[1] * t.shape[2];
  return t.data.subarray(e * per, (e + 1) * per);
}

/** A Mixture-of-Experts block: router, routed experts, optional shared experts. */
export class MoELayer {
  readonly config: Readonly<MoEConfig>;
  readonly architecture: Readonly<MoEArchitecture>;
  readonly routerOptions: Readonly<RouteOptions>;
  private weights: MoEWeights;
  private router: PackedLinear;
  private gateUp?: PackedExperts;
  private w1?: PackedExperts;
  private w2!: PackedExperts;
  private sharedGateUp?: PackedExperts;
  private sharedDown?: PackedExperts;
  private sharedGateW?: PackedLinear;
  private format: string = 'dense';
  private sparse?: { first: SparseExperts; down: SparseExperts };

  constructor(config: MoEConfig, weights: MoEWeights) {
    const { dModel: d, dFF: f, numExperts: E } = config;
    for (const [k, v] of Object.entries({ dModel: d, dFF: f, numExperts: E }))
      if (!Number.isInteger(v) || v < 1) err(`config.${k} must be a positive integer, got ${v}`);
    const arch = typeof config.architecture === 'string' ? moePresets[config.architecture] : config.architecture;
    if (!arch) err(`unknown architecture '${String(config.architecture)}' (one of ${Object.keys(moePresets).join(', ')})`);
    this.config = config;
    this.architecture = arch;
    const base = typeof arch.router === 'string' ? routingPresets[arch.router] : arch.router;
    if (!base) err(`unknown router preset '${String(arch.router)}'`);
    const opts: RouteOptions = { ...base, ...config.router };
    if (!config.training) {
      delete opts.jitter;
      delete opts.noiseLogits;
      if (opts.randomSecondExpert) opts.randomSecondExpert = false;
    }
    if (weights.routerBias) {
      if (!(weights.routerBias instanceof Float32Array) || weights.routerBias.length !== E)
        err(`weight 'routerBias' must be a Float32Array of ${E} values`);
      opts.selectionBias = weights.routerBias;
    }
    if (opts.mode !== 'expert-choice' && opts.k !== undefined && opts.k > E) err(`router k = ${opts.k} exceeds numExperts = ${E}`);
    this.routerOptions = opts;
    this.weights = weights;
    this.router = prepackLinear(checkShape('router', weights.router, [E, d]));
    this.w2 = prepackExperts(checkShape('down', weights.down, [E, d, f]), {
      bias: weights.b2 ? checkShape('b2', weights.b2, [E, d]) : null,
    });
    if (arch.gated) {
      if (weights.gateUp) this.gateUp = prepackGatedExperts(checkShape('gateUp', weights.gateUp, [E, 2 * f, d]));
      else if (weights.gate && weights.up)
        this.gateUp = prepackGatedExperts(checkShape('gate', weights.gate, [E, f, d]), checkShape('up', weights.up, [E, f, d]));
      else err(`gated experts need weights 'gate' and 'up' (or 'gateUp')`);
      if (weights.b2) err(`gated experts take no bias 'b2'`);
    } else {
      this.w1 = prepackExperts(checkShape('w1', weights.w1, [E, f, d]), {
        bias: weights.b1 ? checkShape('b1', weights.b1, [E, f]) : null,
      });
    }
    const nShared = arch.sharedExperts ?? 0;
    if (nShared > 0) {
      const sf = config.sharedDFF ?? f * nShared;
      const s = weights.shared;
      if (!s) err(`architecture has ${nShared} shared expert(s): weights 'shared' { gate, up, down } are missing`);
      this.sharedGateUp = prepackGatedExperts(
        { data: checkShape('shared.gate', s.gate, [sf, d]).data, shape: [1, sf, d] },
        { data: checkShape('shared.up', s.up, [sf, d]).data, shape: [1, sf, d] },
      );
      this.sharedDown = prepackExperts({ data: checkShape('shared.down', s.down, [d, sf]).data, shape: [1, d, sf] });
      if (arch.sharedExpertGate) this.sharedGateW = prepackLinear(checkShape('sharedGate', weights.sharedGate, [1, d]));
    } else if (weights.shared) {
      err(`weights include 'shared' experts but the architecture has none (set sharedExperts)`);
    }
  }

  /** Expert weight format currently used: 'dense', 'bsr' or 'nm' (see sparsifyExperts). */
  get expertFormat(): string {
    return this.format;
  }

  private checkX(x: Float32Tensor): void {
    if (!x || typeof x !== 'object' || !(x.data instanceof Float32Array) || !Array.isArray(x.shape) || x.shape.length !== 2)
      throw new TypeError('MoELayer.forward: x must be a tensor { data: Float32Array, shape: [tokens, dModel] }');
    if (x.shape[1] !== this.config.dModel)
      err(`forward: x.shape[1] = ${x.shape[1]} must equal dModel = ${this.config.dModel}`);
  }

  /** options.out, checked: undefined when absent. */
  private outOf(x: Float32Tensor, options: MoEForwardOptions | undefined): Float32Array | undefined {
    if (options === undefined || options === null) return undefined;
    if (typeof options !== 'object') throw new TypeError('MoELayer.forward: options must be an object');
    const out = options.out;
    if (out === undefined || out === null) return undefined;
    if (!(out instanceof Float32Array)) throw new TypeError('MoELayer.forward: options.out must be a Float32Array');
    const n = x.shape[0] * this.config.dModel;
    if (out.length !== n) err(`forward: options.out has ${out.length} floats, y needs ${n} (tokens × dModel)`);
    // x is read again after y is written (shared experts), so they may not share memory.
    const xd = x.data;
    if (out.buffer === xd.buffer && out.byteOffset < xd.byteOffset + xd.byteLength && xd.byteOffset < out.byteOffset + out.byteLength)
      err('forward: options.out overlaps x.data (the block reads x after it writes y)');
    return out;
  }

  private finish(x: Float32Tensor, plan: RoutingPlan, routed: Float32Tensor): MoEForwardResult {
    const y = routed;
    if (this.sharedGateUp && this.sharedDown) {
      const T = x.shape[0];
      const all = new Int32Array([0, T]);
      const h = groupedGatedLinear(x, all, this.sharedGateUp, { activation: this.architecture.activation });
      const s = groupedLinear(h, all, this.sharedDown);
      const d = this.config.dModel;
      if (this.sharedGateW) {
        const g = linear(x, this.sharedGateW).data;
        for (let t = 0; t < T; t++) {
          const gt = 1 / (1 + Math.exp(-g[t]));
          for (let i = 0; i < d; i++) y.data[t * d + i] += gt * s.data[t * d + i];
        }
      } else {
        for (let i = 0; i < y.data.length; i++) y.data[i] += s.data[i];
      }
    }
    return {
      y,
      plan,
      aux: { losses: plan.aux, tokensPerExpert: plan.tokensPerExpert, droppedSlots: plan.dropped.length },
    };
  }

  private routedExperts(x: Float32Tensor, plan: RoutingPlan, out: Float32Array | undefined): Float32Tensor {
    const T = x.shape[0];
    const d = this.config.dModel;
    if (plan.sortedSlots.length === 0) return { data: out ? out.fill(0) : new Float32Array(T * d), shape: [T, d] };
    if (this.sparse) {
      const act = this.architecture.activation;
      return this.architecture.gated
        ? sparseExpertsForward(x, plan, this.sparse.first, this.sparse.down, { activation: act, out })
        : sparsePlainExpertsForward(x, plan, this.sparse.first, this.sparse.down, {
            activation: act,
            b1: this.weights.b1?.data ?? null,
            b2: this.weights.b2?.data ?? null,
            out,
          });
    }
    if (this.gateUp) return expertsForward(x, plan, this.gateUp, this.w2, { activation: this.architecture.activation, out });
    const xs = permute(x, plan);
    const h = groupedLinear(xs, plan.expertOffsets, this.w1!, { activation: this.architecture.activation });
    const ys = groupedLinear(h, plan.expertOffsets, this.w2);
    return combine(ys, plan, { out });
  }

  /**
   * Runs the block on `x: [tokens, dModel]`; with `options.out` the output is
   * written there (see MoEForwardOptions) instead of a new array.
   */
  forward(x: Float32Tensor, options?: MoEForwardOptions): MoEForwardResult {
    this.checkX(x);
    const out = this.outOf(x, options);
    const logits = linear(x, this.router);
    const plan = route(logits, this.routerOptions);
    return this.finish(x, plan, this.routedExperts(x, plan, out));
  }

  /** Same as forward, with the heavy steps off the event loop. */
  async forwardAsync(x: Float32Tensor, options?: MoEForwardOptions): Promise<MoEForwardResult> {
    this.checkX(x);
    const out = this.outOf(x, options);
    const logits = await linearAsync(x, this.router);
    const plan = await routeAsync(logits, this.routerOptions);
    let routed: Float32Tensor;
    if (plan.sortedSlots.length === 0 || !(this.gateUp && !this.sparse)) routed = this.routedExperts(x, plan, out);
    else routed = await expertsForwardAsync(x, plan, this.gateUp, this.w2, { activation: this.architecture.activation, out });
    return this.finish(x, plan, routed);
  }

  /**
   * Prunes every routed expert's matrices — `{ format: 'bsr', blockSize,
   * density }` (blocks of largest L2 norm) or `{ format: 'nm', n, m }` (N
   * largest |w| of every M) — and runs the experts on the sparse kernels from
   * now on. Gated experts prune gate and up as one `[2·ffn, d]` matrix each.
   * Shared experts and the router stay dense. Returns the relative output
   * error ‖y_sparse − y_dense‖ / ‖y_dense‖ on the caller's calibration batch,
   * and the fraction of expert weights kept. Call `densify()` to go back.
   */
  sparsifyExperts(spec: SparseExpertFormat, calibration: Float32Tensor): { relativeError: number; density: number } {
    this.checkX(calibration);
    this.sparse = undefined;
    const ref = this.forward(calibration).y.data;
    const w = this.weights;
    const { numExperts: E, dModel: d, dFF: f } = this.config;
    let first: SparseExperts;
    if (this.architecture.gated) {
      const gu = new Float32Array(E * 2 * f * d);
      for (let e = 0; e < E; e++) {
        if (w.gateUp) gu.set(w.gateUp.data.subarray(e * 2 * f * d, (e + 1) * 2 * f * d), e * 2 * f * d);
        else {
          gu.set(w.gate!.data.subarray(e * f * d, (e + 1) * f * d), e * 2 * f * d);
          gu.set(w.up!.data.subarray(e * f * d, (e + 1) * f * d), (e * 2 + 1) * f * d);
        }
      }
      first = SparseExperts.prune({ data: gu, shape: [E, 2 * f, d] }, spec);
    } else {
      first = SparseExperts.prune(w.w1!, spec);
    }
    const down = SparseExperts.prune(w.down, spec);
    this.sparse = { first, down };
    this.format = spec.format;
    const y = this.forward(calibration).y.data;
    let num = 0;
    let den = 0;
    for (let i = 0; i < y.length; i++) {
      num += (y[i] - ref[i]) ** 2;
      den += ref[i] ** 2;
    }
    const kept = (first.density * first.outFeatures * first.inFeatures + down.density * down.outFeatures * down.inFeatures) /
      (first.outFeatures * first.inFeatures + down.outFeatures * down.inFeatures);
    return { relativeError: den === 0 ? Math.sqrt(num) : Math.sqrt(num / den), density: kept };
  }

  /** Returns the experts to their dense weights. */
  densify(): void {
    this.sparse = undefined;
    this.format = 'dense';
  }

  /** The dense weights this layer was built from (checkpoint layout). */
  get denseWeights(): Readonly<MoEWeights> {
    return this.weights;
  }

  /**
   * Builds a layer from a real checkpoint's tensors (names as Hugging Face
   * models store them; dims are read from the shapes):
   * - Mixtral: `{p}layers.{L}.block_sparse_moe.gate.weight`, `….experts.{e}.w1/w2/w3.weight`;
   * - Qwen2-MoE / Qwen3-MoE: `{p}layers.{L}.mlp.gate.weight`, `….experts.{e}.gate_proj/up_proj/down_proj.weight`,
   *   `….shared_expert.*` and `….shared_expert_gate.weight` (Qwen2);
   * - DeepSeek-V2/V3: `{p}layers.{L}.mlp.gate.weight`, `….gate.e_score_correction_bias` (V3),
   *   `….experts.{e}.*_proj.weight`, `….shared_experts.*_proj.weight`.
   * A missing or misshaped tensor is a RangeError naming it.
   */
  static fromCheckpoint(source: TensorSource | TensorSource[], options: FromCheckpointOptions): MoELayer {
    const sources = Array.isArray(source) ? source : [source];
    if (sources.length === 0 || !sources.every((s) => s && typeof s.has === 'function' && typeof s.get === 'function'))
      throw new TypeError('MoELayer.fromCheckpoint: source must be a SafetensorsFile (or an array of them)');
    const { preset, layer } = options;
    const arch = moePresets[preset];
    if (!arch) err(`fromCheckpoint: unknown preset '${String(preset)}'`);
    if (!Number.isInteger(layer) || layer < 0) err(`fromCheckpoint: layer must be a non-negative integer, got ${layer}`);
    const scheme: CheckpointScheme | undefined = preset === 'mixtral' ? 'mixtral' : preset.startsWith('qwen') ? 'qwen' : preset.startsWith('deepseek') ? 'deepseek' : undefined;
    if (!scheme) err(`fromCheckpoint: preset '${preset}' has no checkpoint naming scheme (mixtral, qwen2-moe, qwen3-moe, deepseek-v2, deepseek-v3)`);
    const base = `${options.prefix ?? 'model.'}layers.${layer}.${scheme === 'mixtral' ? 'block_sparse_moe' : 'mlp'}.`;
    const has = (n: string) => sources.some((s) => s.has(n));
    const get = (n: string): Float32Tensor => {
      const s = sources.find((src) => src.has(n));
      if (!s) err(`fromCheckpoint: tensor '${n}' is missing from the checkpoint`);
      return s.get(n);
    };
    const router = get(base + 'gate.weight');
    if (router.shape.length !== 2) err(`fromCheckpoint: tensor '${base}gate.weight' must be [experts, d], got [${router.shape.join(', ')}]`);
    const [E, d] = router.shape;
    const names = scheme === 'mixtral' ? { gate: 'w1', up: 'w3', down: 'w2' } : { gate: 'gate_proj', up: 'up_proj', down: 'down_proj' };
    const expertName = (e: number, m: string) => `${base}experts.${e}.${m}.weight`;
    const first = get(expertName(0, names.gate));
    const f = first.shape[0];
    const stack = (m: string, rows: number, cols: number): Float32Tensor => {
      const out = new Float32Array(E * rows * cols);
      for (let e = 0; e < E; e++) {
        const n = expertName(e, m);
        const t = e === 0 && m === names.gate ? first : get(n);
        if (t.shape.length !== 2 || t.shape[0] !== rows || t.shape[1] !== cols)
          err(`fromCheckpoint: tensor '${n}' has shape [${t.shape.join(', ')}], expected [${rows}, ${cols}]`);
        out.set(t.data, e * rows * cols);
      }
      return { data: out, shape: [E, rows, cols] };
    };
    const weights: MoEWeights = {
      router,
      gate: stack(names.gate, f, d),
      up: stack(names.up, f, d),
      down: stack(names.down, d, f),
    };
    let sharedDFF: number | undefined;
    let architecture: MoEArchitecture = { ...arch };
    const sharedBase = scheme === 'qwen' ? `${base}shared_expert.` : `${base}shared_experts.`;
    if (scheme !== 'mixtral' && has(sharedBase + 'gate_proj.weight')) {
      const g = get(sharedBase + 'gate_proj.weight');
      sharedDFF = g.shape[0];
      const expect = (n: string, shape: number[]) => {
        const t = get(sharedBase + n);
        if (t.shape.length !== 2 || t.shape[0] !== shape[0] || t.shape[1] !== shape[1])
          err(`fromCheckpoint: tensor '${sharedBase + n}' has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
        return t;
      };
      weights.shared = { gate: expect('gate_proj.weight', [sharedDFF, d]), up: expect('up_proj.weight', [sharedDFF, d]), down: expect('down_proj.weight', [d, sharedDFF]) };
      architecture = { ...architecture, sharedExperts: Math.max(1, Math.round(sharedDFF / f)) };
      if (scheme === 'qwen' && has(`${base}shared_expert_gate.weight`)) {
        weights.sharedGate = get(`${base}shared_expert_gate.weight`);
        architecture.sharedExpertGate = true;
      } else {
        architecture.sharedExpertGate = false;
      }
    } else {
      architecture = { ...architecture, sharedExperts: 0, sharedExpertGate: false };
    }
    if (has(`${base}gate.e_score_correction_bias`)) weights.routerBias = get(`${base}gate.e_score_correction_bias`).data;
    return new MoELayer(
      { dModel: d, dFF: f, numExperts: E, architecture, sharedDFF, router: options.router, training: options.training },
      weights,
    );
  }

  /** Per-expert view of a `[E, rows, cols]` stack, for tests and tools. */
  static expertSlice(t: Float32Tensor, e: number): Float32Array {
    return slice3(t, e);
  }
}
