/**
 * Mixture-of-Experts routing: router logits → a routing plan.
 *
 * `route(logits, options)` runs one fused, multi-threaded C++ kernel; every
 * router variant below is an option of it, and {@link routingPresets} name the
 * settings of real models. Results are bitwise identical for any thread count.
 *
 * ## Pipeline (per token `t`, experts `e = 0…E−1`)
 *
 * 1. **Routing logits** `l' = l·m + z·softplus(n)`: `m = 1` unless `jitter` ε is
 *    set (then `m ~ U(1−ε, 1+ε)` per element: Switch's multiplicative jitter,
 *    applied here to the logits because `route` only sees logits), `z = 0`
 *    unless `noiseLogits` `n` is given (then `z ~ N(0, 1)`: noisy top-k gating,
 *    Shazeer et al. 2017, `H = x·W_g + N(0,1)·softplus(x·W_noise)`).
 * 2. **Scores** `s = softmax(l')` over all experts, `σ(l')`, or `l'` (`score`).
 * 3. **Selection**: the `k` largest of `s + selectionBias` (`scoreBeforeTopK:
 *    true`, the default: Switch, Mixtral, Qwen, DeepSeek) or of
 *    `l' + selectionBias` (`false`). With `groups`, experts are split into
 *    `groups` equal contiguous groups, each group is scored by its best
 *    selection value (`groupScore: 'max'`, DeepSeek-V2) or the sum of its best
 *    two (`'sum-top2'`, DeepSeek-V3), only the `topkGroups` best groups stay
 *    eligible, and the top `k` are chosen among their experts.
 * 4. **Weights**: with `scoreBeforeTopK`, the unbiased scores `s` of the chosen
 *    experts (the bias only steers selection, DeepSeek-V3); otherwise softmax
 *    over the `k` kept logits (or `σ`, or the raw logit). Then `renormalize`
 *    divides by their sum, then `scalingFactor` multiplies (DeepSeek's
 *    `routed_scaling_factor`).
 * 5. **Dispatch**: slots are grouped by expert; capacity may drop some.
 *
 * Slots are numbered `t·k + j`; slot `j = 0` of a token is its best expert
 * (descending selection value), so `expertIds`/`weights` are `[T, k]` row-major.
 *
 * ## Tie-breaking
 *
 * Equal selection values always go to the **lower expert index** (top-k, group
 * choice: lower group index; expert choice: an expert prefers the **lower token
 * index**; score-based dropping: the **earlier slot**). Where no bias or
 * sum-of-top-2 group score is involved the kernel compares the logits
 * themselves (softmax and sigmoid preserve order), so equal logits are ties
 * exactly and nothing depends on rounding inside `exp`. `-0` equals `+0`.
 *
 * ## Capacity and dropping
 *
 * `capacityFactor: f > 0` limits each expert to
 * `C = min(T, ceil(k·T·f / E))` slots (top-k and hash modes), evaluated in
 * float64 in exactly that order (`Math.ceil(k * T * f / E)`), and at least 1.
 * `f = 0` (the default) is dropless. An expert with more than `C` slots keeps:
 * - `dropPolicy: 'position'` (default): GShard/Switch order — every token's 1st
 *   choice before any token's 2nd choice, earlier tokens first within a rank;
 *   the rest is dropped.
 * - `'score'`: the `C` slots with the highest score (the weight before
 *   renormalisation and scaling), ties to the earlier slot — the slot-level form
 *   of batch-prioritised routing (Riquelme et al. 2021, V-MoE).
 *
 * `dropped` lists, in ascending order, every slot that is not dispatched:
 * capacity overflow and GShard's randomly skipped 2nd experts. Dropped slots
 * keep their `expertIds`/`weights` (what the router chose) but are absent from
 * `sortedSlots`, `tokensPerExpert` and `expertOffsets`; a combine step that
 * walks `sortedSlots` gives them no output (the residual carries the token).
 *
 * ## Randomness and seeding
 *
 * Noise, jitter, GShard's draw and the hash all come from one counter-based
 * generator: each draw is a pure function of `(seed, stream, token, counter)` —
 * `mix32(mix32(key ^ token) ^ counter)` with `mix32` the "lowbias32" integer
 * hash (Chris Wellons' hash prospector) and `key` derived from the 53-bit
 * `seed` and the stream (noise 1, jitter 2, GShard 3, hash 4). Uniforms use 24
 * bits, centred in `(0, 1)`; normals are Box–Muller from the pair of counters
 * `2e, 2e+1`. Same seed and inputs → same plan, on any thread count or ISA;
 * pass a new `seed` each training step to get fresh noise (default `0`).
 * GShard keeps a token's 2nd expert iff `2·g2/(g1+g2) > u`, `u ~ U(0, 1)`.
 *
 * ## Expert choice (`mode: 'expert-choice'`, Zhou et al. 2022)
 *
 * Each expert takes its `C = min(T, ceil(T·f/E))` best tokens by score `s`
 * (ties to the lower token), so a token gets 0…E experts. The plan keeps the
 * same shape: `k` is the most experts any token got, and row `t` of
 * `expertIds`/`weights` lists that token's experts in **ascending expert
 * order**, padded at the end with `-1` / `0`. Slot numbering stays `t·k + j`,
 * so `sortedSlots` (ordered by expert, then token) and `expertOffsets` feed the
 * grouped-experts op exactly as in top-k mode (`token = slot / k`, every expert
 * has exactly `C` slots, nothing is dropped). A token with no expert has a row
 * of `-1`s. `renormalize` normalises each row over its real entries.
 *
 * ## Hash routing (`mode: 'hash'`, Roller et al. 2021)
 *
 * Expert `e0 = floor(h·E / 2³²)` with `h` the generator's hash of
 * `tokenIds[t]` (stream 4, so `seed` picks the hash function); slots `j` use
 * `(e0 + j) mod E`. Every token id always maps to the same experts and a
 * uniform hash spreads a vocabulary evenly. Weights are the chosen experts'
 * `softmax`/`sigmoid` scores (then renormalize/scale) — or `1` with `score:
 * 'none'` (hash layers have no gate; the logits only supply `T` and `E`).
 *
 * ## Losses (`aux`), each `coefficient ·` the formula, with `p` the router
 * probabilities (`softmax(l')`; for `score: 'sigmoid'`, `σ(l')/Σσ(l')`) and
 * counts `c_i` of **selected** slots (before capacity or random drops):
 * - `loadBalance` — Switch Transformer `E·Σ_i f_i·P_i`, `f_i = c_i/T` (sums to
 *   k), `P_i = mean_t p[t,i]`: Hugging Face's `load_balancing_loss_func`.
 * - `zLoss` — ST-MoE router z-loss `mean_t logsumexp(l'_t)²`.
 * - `importance` — Shazeer et al. 2017 `CV(Σ_t gates)²` over the final
 *   weights, `var/(mean² + 1e-10)` (population variance, their ε).
 * - `sequenceBalance` — DeepSeek-V2/V3 sequence-wise balance
 *   `Σ_i f_i·P_i` per sequence of `sequenceLength` tokens (default: all T),
 *   `f_i = E·c_i/(k·L)`, averaged over sequences.
 * With `aux.gradients: true` each loss also carries `grad`, d loss / d logits
 * `[T, E]` (selection counts held constant, noise draws fixed; through jitter).
 *
 * ## Validation
 *
 * Every argument is checked before anything runs: `TypeError` for a wrong kind
 * of value, `RangeError` for a wrong size or value (k outside 1…E, groups not
 * dividing E, non-finite logits, a negative capacity factor, a missing
 * `tokenIds` for hash mode, ...), each message starting with the function name
 * and naming the argument. An option the chosen mode would ignore (`k` in
 * expert choice, `selectionBias` in hash mode, ...) is a `RangeError` too;
 * unknown keys are ignored. Non-finite logits are rejected — mask an expert
 * with a large negative finite logit.
 */
import { native } from './native';
import type { Float32Tensor } from './tensor';

export type RouteMode = 'top-k' | 'expert-choice' | 'hash';
export type RouteScore = 'softmax' | 'sigmoid' | 'none';
export type GroupScore = 'max' | 'sum-top2';
export type DropPolicy = 'position' | 'score';

/** Balance losses to compute: each key present is a loss coefficient (≥ 0). */
export interface RouteAuxOptions {
  /** Switch load-balancing coefficient α. */
  loadBalance?: number;
  /** ST-MoE router z-loss coefficient. */
  zLoss?: number;
  /** Importance (CV²) loss coefficient. */
  importance?: number;
  /** DeepSeek sequence-wise balance coefficient α. */
  sequenceBalance?: number;
  /** Tokens per sequence for `sequenceBalance` (T must be a multiple; default T). */
  sequenceLength?: number;
  /** Also return d loss / d logits for each loss. */
  gradients?: boolean;
}

export interface RouteOptions {
  /** `'top-k'` (default), `'expert-choice'` or `'hash'`. */
  mode?: RouteMode;
  /** Score function: `'softmax'` (default), `'sigmoid'`, `'none'` (raw logits). */
  score?: RouteScore;
  /** Score all experts, then select (default `true`); `false`: select on logits, score the kept k. */
  scoreBeforeTopK?: boolean;
  /** Experts per token, 1…E (default 1). Not used in expert-choice mode. */
  k?: number;
  /** Divide the kept weights by their sum (needs softmax or sigmoid scores). */
  renormalize?: boolean;
  /** Multiplies the weights after renormalisation (default 1). */
  scalingFactor?: number;
  /** `[E]`, added to the scores for selection only (DeepSeek-V3 `e_score_correction_bias`). */
  selectionBias?: Float32Array | Float32Tensor;
  /** Group-limited selection: number of equal, contiguous expert groups (must divide E). */
  groups?: number;
  /** How many groups stay eligible (1…groups); required with `groups`. */
  topkGroups?: number;
  /** Group score: best member (`'max'`, default) or sum of the best two (`'sum-top2'`). */
  groupScore?: GroupScore;
  /** `[T, E]` noise logits `x·W_noise` for noisy top-k: `l += N(0,1)·softplus(noiseLogits)`. */
  noiseLogits?: Float32Tensor | Float32Array;
  /** Multiplicative jitter ε in [0, 1): logits · U(1−ε, 1+ε). */
  jitter?: number;
  /** Seed of every random draw (noise, jitter, GShard, hash): an integer in [0, 2^53). Default 0. */
  seed?: number;
  /** Capacity factor f ≥ 0; 0 (default) = dropless. Required (> 0) for expert choice. */
  capacityFactor?: number;
  /** Which slots an over-capacity expert drops: `'position'` (default) or `'score'`. */
  dropPolicy?: DropPolicy;
  /** GShard: dispatch the 2nd expert only if 2·g2 > u (needs k = 2). */
  randomSecondExpert?: boolean;
  /** `[T]` token ids, required by hash mode. */
  tokenIds?: Int32Array;
  /** Balance losses to compute. */
  aux?: RouteAuxOptions;
}

export interface RouteLoss {
  /** coefficient · loss. */
  value: number;
  /** d value / d logits, `[T, E]` row-major like the logits (with `aux.gradients`). */
  grad?: Float32Array;
}

export interface RoutingPlan {
  /** T */
  tokens: number;
  /** E */
  experts: number;
  /** Slots per token: `options.k`, or in expert choice the most experts any token got. */
  k: number;
  /** Slots each expert may keep (0 = unlimited). */
  capacity: number;
  /** `[T, k]` expert of each slot (expert choice: `-1` pads a row). */
  expertIds: Int32Array;
  /** `[T, k]` weight of each slot (expert choice: `0` on padding). */
  weights: Float32Array;
  /** `[E]` dispatched (kept) slots per expert. */
  tokensPerExpert: Int32Array;
  /** `[E + 1]` prefix sums of `tokensPerExpert`: expert e's slots are `sortedSlots[expertOffsets[e] … expertOffsets[e+1])`. */
  expertOffsets: Int32Array;
  /** Kept slots `t·k + j`, sorted by expert, stable in slot (token) order. */
  sortedSlots: Int32Array;
  /** Slots not dispatched (capacity overflow, GShard random skip), ascending. */
  dropped: Int32Array;
  /** The losses asked for in `options.aux`. */
  aux: {
    loadBalance?: RouteLoss;
    zLoss?: RouteLoss;
    importance?: RouteLoss;
    sequenceBalance?: RouteLoss;
  };
}

/**
 * Routes `logits: [tokens, experts]` (fp32) and returns the plan. See the
 * module documentation for every option's exact semantics.
 *
 * @example
 * const plan = route(logits, routingPresets.mixtral);
 * const plan2 = route(logits, { ...routingPresets['deepseek-v3'], selectionBias: bias });
 */
export function route(logits: Float32Tensor, options?: RouteOptions): RoutingPlan {
  return native.route(logits, options);
}

/**
 * Same as {@link route}, computed off the event loop. Arguments are checked
 * before it starts (a bad argument throws synchronously); do not modify the
 * logits or option arrays until the promise settles.
 */
export function routeAsync(logits: Float32Tensor, options?: RouteOptions): Promise<RoutingPlan> {
  return native.routeAsync(logits, options);
}

/**
 * Gradient of the routing weights w.r.t. the logits: given `gradWeights`
 * (d loss / d `plan.weights`, `[T, plan.k]`), returns d loss / d logits
 * `[T, E]`. Pass the same `options` the plan was routed with (score,
 * scoreBeforeTopK, renormalize, scalingFactor, jitter, noise and seed all
 * matter). The selection is held fixed: only the weights' dependence on the
 * logits is differentiated (softmax over all experts, softmax over the kept
 * ones when renormalised or scored after top-k, sigmoid with or without
 * renormalisation, raw logits). `-1` slots are skipped; give dropped slots a
 * zero gradient if your combine ignored them.
 */
export function routeBackward(
  logits: Float32Tensor,
  plan: Pick<RoutingPlan, 'expertIds' | 'k'>,
  gradWeights: Float32Array,
  options?: RouteOptions,
): Float32Tensor {
  return native.routeBackward(logits, plan, gradWeights, options);
}

/** {@link routeBackward} off the event loop. */
export function routeBackwardAsync(
  logits: Float32Tensor,
  plan: Pick<RoutingPlan, 'expertIds' | 'k'>,
  gradWeights: Float32Array,
  options?: RouteOptions,
): Promise<Float32Tensor> {
  return native.routeBackwardAsync(logits, plan, gradWeights, options);
}

/**
 * DeepSeek-V3 auxiliary-loss-free balancing (Wang et al. 2024; DeepSeek-V3
 * §2.1.2): after each step, `bias_i += γ·sign(mean_j load_j − load_i)` — an
 * overloaded expert's bias drops by γ, an underloaded one's rises, an exactly
 * average one stays. Returns a new array; `bias` is not modified. Pass
 * `plan.tokensPerExpert` (or counts summed over a step) as the loads.
 */
export function updateSelectionBias(
  bias: Float32Array | Float32Tensor,
  tokensPerExpert: Int32Array,
  gamma: number,
): Float32Array {
  return native.updateSelectionBias(bias, tokensPerExpert, gamma);
}

/** DeepSeek-V3's bias update speed γ for the first 14.3T training tokens (paper §4.2). */
export const DEEPSEEK_V3_BIAS_UPDATE_SPEED = 0.001;

export type RoutingPresetName =
  | 'switch'
  | 'gshard'
  | 'mixtral'
  | 'qwen2-moe'
  | 'qwen3-moe'
  | 'deepseek-v2'
  | 'deepseek-v3'
  | 'expert-choice'
  | 'hash';

function preset(o: RouteOptions): Readonly<RouteOptions> {
  if (o.aux) Object.freeze(o.aux);
  return Object.freeze(o);
}

/**
 * The routers of real models as plain option objects: read them, spread them
 * and override (`{ ...routingPresets.mixtral, capacityFactor: 1.25 }`). The
 * number of experts comes from the logits' shape; the comments say the model
 * each setting was taken from. Training-only settings (jitter, losses) are
 * included where the source specifies them; drop them for inference.
 */
export const routingPresets: Readonly<Record<RoutingPresetName, Readonly<RouteOptions>>> = Object.freeze({
  // Switch Transformers (Fedus, Zoph & Shazeer 2021): top-1 softmax router
  // (§2.1); load-balancing loss α = 10⁻² (§2.2); capacity factor 1.25, one of
  // the training settings compared in their Table 1; multiplicative jitter 10⁻² (Hugging Face
  // SwitchTransformersConfig.router_jitter_noise = 0.01; Switch jitters the
  // router input, here the logits). Overflowing tokens are dropped by position.
  switch: preset({
    k: 1,
    score: 'softmax',
    capacityFactor: 1.25,
    dropPolicy: 'position',
    jitter: 0.01,
    aux: { loadBalance: 0.01 },
  }),
  // GShard (Lepikhin et al. 2020), Algorithm 1: top-2 softmax gating, g1 and g2
  // normalised by g1 + g2, the 2nd expert dispatched only if 2·g2 > U(0,1),
  // expert capacity 2N/E (= capacityFactor 1 with k = 2 here), first choices
  // before second choices when filling capacity. Its loss weight is not
  // given in Algorithm 1, so no aux loss is preset: set aux.loadBalance.
  gshard: preset({
    k: 2,
    score: 'softmax',
    renormalize: true,
    randomSecondExpert: true,
    capacityFactor: 1,
    dropPolicy: 'position',
  }),
  // Mixtral 8x7B (mistralai/Mixtral-8x7B-v0.1 config.json): 8 experts,
  // num_experts_per_tok 2, router_aux_loss_coef 0.02; Hugging Face
  // MixtralSparseMoeBlock: softmax over all experts, top-2, renormalised.
  // Dropless.
  mixtral: preset({
    k: 2,
    score: 'softmax',
    scoreBeforeTopK: true,
    renormalize: true,
    aux: { loadBalance: 0.02 },
  }),
  // Qwen1.5-MoE-A2.7B (Qwen2MoeForCausalLM, config.json): 60 experts,
  // num_experts_per_tok 4, norm_topk_prob false, router_aux_loss_coef 0.001;
  // softmax over all experts, top-4, not renormalised. Dropless. (The shared
  // expert and its sigmoid gate are not part of routing.)
  'qwen2-moe': preset({
    k: 4,
    score: 'softmax',
    scoreBeforeTopK: true,
    renormalize: false,
    aux: { loadBalance: 0.001 },
  }),
  // Qwen3-30B-A3B / 235B-A22B (Qwen3MoeForCausalLM, config.json): 128 experts,
  // num_experts_per_tok 8, norm_topk_prob true, router_aux_loss_coef 0.001.
  'qwen3-moe': preset({
    k: 8,
    score: 'softmax',
    scoreBeforeTopK: true,
    renormalize: true,
    aux: { loadBalance: 0.001 },
  }),
  // DeepSeek-V2 (deepseek-ai/DeepSeek-V2 config.json): 160 routed experts,
  // num_experts_per_tok 6, scoring_func softmax, topk_method
  // group_limited_greedy with n_group 8, topk_group 3 (device-limited
  // routing, M = 3), norm_topk_prob false, routed_scaling_factor 16.0,
  // aux_loss_alpha 0.001 with seq_aux true (sequence-wise). The paper's
  // device- and communication-balance losses are not modelled here.
  'deepseek-v2': preset({
    k: 6,
    score: 'softmax',
    scoreBeforeTopK: true,
    groups: 8,
    topkGroups: 3,
    groupScore: 'max',
    renormalize: false,
    scalingFactor: 16,
    aux: { sequenceBalance: 0.001 },
  }),
  // DeepSeek-V3 (deepseek-ai/DeepSeek-V3 config.json): 256 routed experts,
  // num_experts_per_tok 8, scoring_func sigmoid, topk_method noaux_tc with
  // n_group 8, topk_group 4 (groups scored by the sum of their top-2 biased
  // scores), norm_topk_prob true, routed_scaling_factor 2.5. Pass the model's
  // e_score_correction_bias as selectionBias (and update it in training with
  // updateSelectionBias(bias, plan.tokensPerExpert, DEEPSEEK_V3_BIAS_UPDATE_SPEED)).
  // Sequence-wise balance loss α = 0.0001 (paper §4.2).
  'deepseek-v3': preset({
    k: 8,
    score: 'sigmoid',
    scoreBeforeTopK: true,
    groups: 8,
    topkGroups: 4,
    groupScore: 'sum-top2',
    renormalize: true,
    scalingFactor: 2.5,
    aux: { sequenceBalance: 0.0001 },
  }),
  // Expert choice (Zhou et al. 2022): S = softmax(X·W_g) over experts, each
  // expert takes its top C = T·c/E tokens, capacity factor c = 2 (EC-CF2,
  // their main setting).
  'expert-choice': preset({
    mode: 'expert-choice',
    score: 'softmax',
    capacityFactor: 2,
  }),
  // Hash layers (Roller et al. 2021): one expert per token, a fixed hash of
  // the token id, no gate (weight 1). Pass tokenIds.
  hash: preset({
    mode: 'hash',
    k: 1,
    score: 'none',
  }),
});
