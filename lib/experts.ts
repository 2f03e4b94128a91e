/**
 * Grouped expert GEMMs for Mixture-of-Experts layers, with the permute and
 * combine around them:
 *
 *   x [tokens, d] ──permute──▶ xs [rows, d]  (rows grouped by expert)
 *     ──groupedGatedLinear──▶ h [rows, ffn] = act(xs·W1ₑᵀ) ⊙ (xs·W3ₑᵀ)
 *     ──groupedLinear──▶ ys [rows, d] = h·W2ₑᵀ
 *     ──combine──▶ y [tokens, d] = Σⱼ weight[t, j] · ys[row of slot (t, j)]
 *
 * Slots: token t's j-th routing choice is slot `t·k + j`. A plan lists the
 * kept slots grouped by expert (`sortedSlots`, stable in token order) and
 * where each expert's rows start (`expertOffsets`, length E + 1). Dropped
 * slots are simply absent and contribute 0.
 *
 * Every expert is computed in one call: tiles of all experts are scheduled
 * together across the thread pool (no per-expert barrier, no padding, an empty
 * expert costs nothing). Expert weights use the checkpoint layout
 * `[experts, out, in]` and are packed once.
 */
import { native, type ActivationName } from './native';
import type { Float32Tensor } from './tensor';

/** Expert weights packed once (dense format) for the grouped kernels. */
export interface PackedExperts {
  readonly numExperts: number;
  readonly outFeatures: number;
  readonly inFeatures: number;
  /** True for a gate/up pair (SwiGLU/GeGLU), false for a plain stack. */
  readonly gated: boolean;
  readonly isa: string;
  readonly bytes: number;
}

/** The fields of a routing plan the expert ops read. `route()` returns a superset. */
export interface ExpertPlan {
  /** Kept slots `t·k + j`, grouped by expert, stable in token order. */
  readonly sortedSlots: Int32Array;
  /** `[E + 1]`: expert e owns rows `expertOffsets[e] … expertOffsets[e+1]` of the permuted batch. */
  readonly expertOffsets: Int32Array;
  /** `[tokens·k]` combine weight of each slot. */
  readonly weights: Float32Array;
  /** Choices per token. */
  readonly k: number;
}

/**
 * Packs a stack of expert weight matrices `W: [experts, out, in]` (one
 * Float32Array, checkpoint layout), with optional `bias: [experts, out]`.
 */
export function prepackExperts(W: Float32Tensor, options?: { bias?: Float32Tensor | null }): PackedExperts {
  return native.prepackExperts(W, options);
}

/**
 * Packs gated experts (SwiGLU/GeGLU): either two stacks `gate` (W1,
 * Mixtral's `w1`, Qwen/DeepSeek's `gate_proj`) and `up` (W3, `w3`/`up_proj`),
 * each `[experts, ffn, d]`, or one concatenated stack `[experts, 2·ffn, d]`
 * whose first ffn rows per expert are the gate and the next ffn rows the up
 * projection.
 */
export function prepackGatedExperts(gate: Float32Tensor, up?: Float32Tensor): PackedExperts {
  return native.prepackGatedExperts(gate, up);
}

export interface GroupedOptions {
  /** Plain stacks: fused into the store (default none). Gated: applied to the gate product (default silu). */
  activation?: ActivationName;
  out?: Float32Array | null;
}

/** For every expert e: rows `expertOffsets[e]…expertOffsets[e+1]` of `xs` times `W_eᵀ` (+ `b_e`), activated. */
export function groupedLinear(
  xs: Float32Tensor,
  expertOffsets: Int32Array,
  experts: PackedExperts,
  options?: GroupedOptions,
): Float32Tensor {
  return native.groupedLinear(xs, expertOffsets, experts, options);
}

export function groupedLinearAsync(
  xs: Float32Tensor,
  expertOffsets: Int32Array,
  experts: PackedExperts,
  options?: GroupedOptions,
): Promise<Float32Tensor> {
  return native.groupedLinearAsync(xs, expertOffsets, experts, options);
}

/**
 * Fused gated expert layer: `act(xs·W1ₑᵀ) ⊙ (xs·W3ₑᵀ)` per expert, in one pass
 * over `xs` (both products share each tile of `xs` in cache; only a per-task
 * block of the up product is ever held, never the full intermediate).
 */
export function groupedGatedLinear(
  xs: Float32Tensor,
  expertOffsets: Int32Array,
  gateUp: PackedExperts,
  options?: GroupedOptions,
): Float32Tensor {
  return native.groupedGatedLinear(xs, expertOffsets, gateUp, options);
}

export function groupedGatedLinearAsync(
  xs: Float32Tensor,
  expertOffsets: Int32Array,
  gateUp: PackedExperts,
  options?: GroupedOptions,
): Promise<Float32Tensor> {
  return native.groupedGatedLinearAsync(xs, expertOffsets, gateUp, options);
}

/** Gathers token rows into expert order: `xs[i] = x[sortedSlots[i] / k]`. */
export function permute(x: Float32Tensor, plan: ExpertPlan, options?: { out?: Float32Array | null }): Float32Tensor {
  return native.permute(x, plan.sortedSlots, plan.k, options);
}

export function permuteAsync(
  x: Float32Tensor,
  plan: ExpertPlan,
  options?: { out?: Float32Array | null },
): Promise<Float32Tensor> {
  return native.permuteAsync(x, plan.sortedSlots, plan.k, options);
}

/**
 * `y[t] = Σⱼ weights[t·k + j] · ys[row of slot t·k + j]`, summed in order
 * j = 0…k−1 (deterministic); dropped slots contribute 0.
 */
export function combine(ys: Float32Tensor, plan: ExpertPlan, options?: { out?: Float32Array | null }): Float32Tensor {
  return native.combine(ys, plan.sortedSlots, plan.weights, plan.k, options);
}

export function combineAsync(
  ys: Float32Tensor,
  plan: ExpertPlan,
  options?: { out?: Float32Array | null },
): Promise<Float32Tensor> {
  return native.combineAsync(ys, plan.sortedSlots, plan.weights, plan.k, options);
}

/**
 * Gated-linear-unit combine of a product whose first half of columns is the
 * gate and second half the up projection: `act(h[:, :n]) ⊙ h[:, n:]` →
 * `[rows, n]` (SwiGLU with silu, the default; GeGLU with gelu/gelu_tanh).
 */
export function glu(h: Float32Tensor, options?: GroupedOptions): Float32Tensor {
  return native.glu(h, options);
}

export function gluAsync(h: Float32Tensor, options?: GroupedOptions): Promise<Float32Tensor> {
  return native.gluAsync(h, options);
}

export interface ExpertsForwardOptions {
  /** Gate activation: silu (SwiGLU, default), gelu or gelu_tanh (GeGLU), relu. */
  activation?: ActivationName;
  out?: Float32Array | null;
}

/**
 * permute → gated grouped linear → grouped linear (down) → combine, in one
 * native call. Intermediate buffers live in a per-thread workspace that grows
 * once and is reused, so steady-state calls allocate nothing proportional to
 * the batch or the weights (beyond the output, or none with `out`).
 *
 * `gateUp`: from `prepackGatedExperts` (`[E, ffn, d]` pairs); `down`: from
 * `prepackExperts` on `[E, d, ffn]` (Mixtral's `w2`, `down_proj`).
 */
export function expertsForward(
  x: Float32Tensor,
  plan: ExpertPlan,
  gateUp: PackedExperts,
  down: PackedExperts,
  options?: ExpertsForwardOptions,
): Float32Tensor {
  return native.expertsForward(x, plan, gateUp, down, options);
}

export function expertsForwardAsync(
  x: Float32Tensor,
  plan: ExpertPlan,
  gateUp: PackedExperts,
  down: PackedExperts,
  options?: ExpertsForwardOptions,
): Promise<Float32Tensor> {
  return native.expertsForwardAsync(x, plan, gateUp, down, options);
}
