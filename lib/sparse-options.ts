import type { ActivationName } from './native';

/** Options of the grouped sparse-experts ops, `nmGroupedLinear` and `bsrGroupedLinear`. */
export interface GroupedSparseOptions {
  /**
   * Gated experts (SwiGLU / GeGLU): every expert's matrix stacks its gate rows
   * over its up rows (`[2·ffn, in]`, gate first) and the result is
   * `act(xs·W_gateᵀ) ⊙ (xs·W_upᵀ)`, `[rows, ffn]`. Default false.
   */
  gated?: boolean;
  /** Applied to each product (plain) or to the gate (gated; default 'silu'). Default 'none' when plain. */
  activation?: ActivationName;
  /** Preallocated result, `[rows, out]` (plain) or `[rows, out / 2]` (gated). */
  out?: Float32Array | null;
}
