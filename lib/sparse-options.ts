import type { ActivationName, PackedNMLinear } from './native';

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

/** `nmGroupedLinear`'s options: those of every grouped sparse op, and `down`. */
export interface NMGroupedOptions extends GroupedSparseOptions {
  /**
   * With `gated`: each expert's down projection (`[d, ffn]`, `prepackNM`,
   * the gate/up stack's pattern for the fused path), applied in the same call:
   * the result is `down_e(act(gate) ⊙ up)`, `[rows, d]` (and `out` that
   * size). The gated product reaches the down kernel in its packed layout,
   * never as `[rows, ffn]` rows; the values are bit for bit those of the two
   * separate calls.
   */
  down?: readonly PackedNMLinear[];
}
