/**
 * N:M structured sparsity: in every group of `m` consecutive weights along the
 * input dimension at most `n` are nonzero (2:4 is what GPU sparse tensor cores
 * run). On a CPU the speed comes from moving fewer bytes and doing N/M of the
 * multiply-adds; `nmLinear` does both.
 *
 * ## Format
 *
 * `NMSparseMatrix` holds a `[rows, cols]` matrix (for a layer: `W: [out, in]`,
 * PyTorch `nn.Linear` layout) with `cols % m == 0`:
 *
 * - `values: Float32Array [rows, cols·n/m]` — the kept slots of every group,
 *   in increasing column order (a kept slot may hold 0);
 * - `indices: Uint8Array [rows, ceil(cols·n/m · B / 8)]` — each kept value's
 *   column inside its group (0..m−1) in `B = ceil(log2 m)` bits (1 bit for
 *   m = 2, 2 for m ≤ 4, 3 for m ≤ 8, 4 for m ≤ 16), packed LSB-first; every
 *   row starts on a byte and the unused bits of a row's last byte are 0.
 *   Within a group the indices strictly increase.
 *
 * Any `1 ≤ n < m ≤ 16` works; 1:2, 2:4, 1:4, 2:8, 1:8 and 4:8 have kernels
 * specialised at compile time (`isTunedPattern`), every other pattern runs a
 * generic kernel.
 *
 * ## Kernels
 *
 * `nmLinear(x, W)` is `y = act(x·Wᵀ + b)`; `nmLinearTransposed(dy, W)` is
 * `dx = dy·W` (the input gradient of the layer). Both are multi-threaded, per
 * instruction set, sync and async, and bitwise identical for any thread
 * count. Pass `prepackNM(W)` (or `W.prepack()`) to skip validating and copying
 * W on every call. What the kernels read (see native/src/nm/nm_impl.h):
 *
 * - decode (1 token; up to 4 for 1:2, 2:4, 4:8 and 2 for 1:4, 2:8): W is
 *   streamed once, values and packed index bits as stored — for 2:4 fp32 that
 *   is 4 + 0.25 bytes per kept value, 0.53× the dense weight
 *   (`PackedNMLinear.bytesPerCall`); 8 indices are decoded per vector and the
 *   matching x values gathered from the few 8-column windows a group of 8
 *   values spans;
 * - prefill (more tokens): x is packed per call into token tiles transposed to
 *   `[in][T]`, and every kept weight (v, c) does a broadcast-FMA of v with row
 *   c of that tile into a register tile of outputs — only kept weights are
 *   multiplied.
 */
import { native, type ActivationName, type PackedNMLinear } from './native';
import type { NMGroupedOptions } from './sparse-options';
import type { Float32Tensor } from './tensor';

export type { PackedNMLinear };

/** `n` of every `m` consecutive weights (along the input dimension) are kept. */
export interface NMPattern {
  n: number;
  m: number;
}

/** The plain data of an N:M matrix (what the native layer reads). */
export interface NMParts {
  rows: number;
  cols: number;
  n: number;
  m: number;
  values: Float32Array;
  indices: Uint8Array;
}

/** The CUTLASS / PyTorch semi-structured 2:4 form (see `NMSparseMatrix.toCutlass24`). */
export interface Cutlass24 {
  rows: number;
  cols: number;
  dtype: 'float16' | 'bfloat16';
  /** Kept values as half bits, `[rows, cols/2]`, row-major, each group's two in column order. */
  values: Uint16Array;
  /** Metadata `[rows, cols/16]` int16, reordered as CUTLASS expects. */
  meta: Int16Array;
}

function pattern(fn: string, p: unknown): NMPattern {
  if (typeof p !== 'object' || p === null || Array.isArray(p)) {
    throw new TypeError(`${fn}: pattern must be an object { n, m }, got ${p === null ? 'null' : typeof p}`);
  }
  const { n, m } = p as { n: unknown; m: unknown };
  return { n: n as number, m: m as number };
}

/**
 * A `[rows, cols]` N:M sparse matrix. Make one with `prune`, `fromMask`,
 * `fromParts`, `random` or `fromCutlass24`; each validates what it is given.
 */
export class NMSparseMatrix implements NMParts {
  readonly rows: number;
  readonly cols: number;
  readonly n: number;
  readonly m: number;
  readonly values: Float32Array;
  readonly indices: Uint8Array;

  private constructor(p: NMParts) {
    this.rows = p.rows;
    this.cols = p.cols;
    this.n = p.n;
    this.m = p.m;
    this.values = p.values;
    this.indices = p.indices;
  }

  /**
   * Magnitude pruning: keeps the `n` largest |w| of every group of `m`
   * columns of `W: [rows, cols]` (ties: the lower column; NaN counts as the
   * largest). `cols` must be a multiple of `m`.
   */
  static prune(W: Float32Tensor, p: NMPattern): NMSparseMatrix {
    const { n, m } = pattern('NMSparseMatrix.prune', p);
    const r = native.nmPrune(W, n, m);
    return new NMSparseMatrix({ rows: W.shape[0], cols: W.shape[1], n, m, values: r.values, indices: r.indices });
  }

  /**
   * Keeps `W` where `mask` (same shape, only 0 and 1) is 1; `mask` must have
   * at most `n` ones in every group of `m` (`RangeError` naming the first
   * group that has more). Groups with fewer ones store 0 in the remaining slots.
   */
  static fromMask(W: Float32Tensor, mask: Float32Tensor, p: NMPattern): NMSparseMatrix {
    const { n, m } = pattern('NMSparseMatrix.fromMask', p);
    const r = native.nmFromMask(W, mask, n, m);
    return new NMSparseMatrix({ rows: W.shape[0], cols: W.shape[1], n, m, values: r.values, indices: r.indices });
  }

  /**
   * Wraps existing data (not copied). Everything is checked: dims, lengths,
   * every index `< m`, strictly increasing within its group, unused bits 0 —
   * a `TypeError`/`RangeError` names the first problem.
   */
  static fromParts(parts: NMParts): NMSparseMatrix {
    native.nmValidate(parts);
    return new NMSparseMatrix(parts);
  }

  /**
   * A random N:M matrix: every group keeps a uniformly random set of `n`
   * columns, values uniform in `[-scale, scale)`. Same seed, same matrix.
   */
  static random(rows: number, cols: number, p: NMPattern, options: { seed?: number; scale?: number } = {}): NMSparseMatrix {
    const { n, m } = pattern('NMSparseMatrix.random', p);
    const r = native.nmRandom(rows, cols, n, m, options.seed ?? 1, options.scale ?? 1);
    return new NMSparseMatrix({ rows, cols, n, m, values: r.values, indices: r.indices });
  }

  /**
   * Imports a 2:4 matrix in the layout of PyTorch's semi-structured sparse
   * tensors (CUTLASS backend) — see `toCutlass24`. Metadata nibbles must
   * encode two distinct increasing indices.
   */
  static fromCutlass24(c: {
    values: Uint16Array;
    meta: Int16Array | Uint16Array;
    rows: number;
    cols: number;
    dtype?: 'float16' | 'bfloat16';
  }): NMSparseMatrix {
    if (typeof c !== 'object' || c === null) throw new TypeError('NMSparseMatrix.fromCutlass24: argument must be { values, meta, rows, cols, dtype? }');
    const r = native.nmFromCutlass24(c.values, c.meta, c.rows, c.cols, c.dtype ?? 'float16');
    return new NMSparseMatrix({ rows: c.rows, cols: c.cols, n: 2, m: 4, values: r.values, indices: r.indices });
  }

  /** `[rows, cols]`. */
  get shape(): [number, number] {
    return [this.rows, this.cols];
  }

  /** Fraction of the dense entries not stored: `1 − n/m` (kept slots holding 0 are not counted). */
  get sparsity(): number {
    return 1 - this.n / this.m;
  }

  /** Bits per stored index: 1, 2, 3 or 4. */
  get indexBits(): number {
    let b = 1;
    while (1 << b < this.m) b++;
    return b;
  }

  /** Bytes of values plus indices (what a decode call reads). */
  get bytes(): number {
    return this.values.byteLength + this.indices.byteLength;
  }

  /** The dense `[rows, cols]` matrix. */
  toDense(): Float32Tensor {
    return native.nmToDense(this);
  }

  /** 0/1 `[rows, cols]`: 1 at every stored slot (exactly `n` per group). */
  mask(): Float32Tensor {
    return native.nmMaskOf(this);
  }

  /**
   * Exports a 2:4 matrix for PyTorch's `SparseSemiStructuredTensorCUTLASS`
   * / CUTLASS sparse GEMMs: values as fp16 (default) or bf16 bits
   * `[rows, cols/2]`, and int16 metadata `[rows, cols/16]` where each int16
   * holds 4 groups as nibbles `idx0 | idx1 << 2` (LSB group first), reordered
   * into CUTLASS's ColumnMajorInterleaved<2> layout as documented in PyTorch's
   * `torch/sparse/_semi_structured_conversions.py`. Needs `rows % 32 == 0`
   * and `cols % 32 == 0` (PyTorch's `to_sparse_semi_structured` itself asks
   * `cols % 64 == 0` for fp16/bf16).
   */
  toCutlass24(dtype: 'float16' | 'bfloat16' = 'float16'): Cutlass24 {
    const r = native.nmToCutlass24(this, dtype);
    return { rows: this.rows, cols: this.cols, dtype, values: r.values, meta: r.meta };
  }

  /** Same as `prepackNM(this)`. */
  prepack(): PackedNMLinear {
    return native.prepackNM(this);
  }
}

/** The 0/1 mask `NMSparseMatrix.prune(W, {n, m})` would keep, as a dense `[rows, cols]` tensor. */
export function nmMask(W: Float32Tensor, p: NMPattern): Float32Tensor {
  const { n, m } = pattern('nmMask', p);
  return native.nmPruneMask(W, n, m);
}

/**
 * True when every group of `m` consecutive columns of `mask` (or any matrix:
 * nonzero = kept, NaN counts as nonzero) has at most `n` nonzeros. False when
 * `cols` is not a multiple of `m`.
 */
export function isNM(mask: Float32Tensor, p: NMPattern): boolean {
  const { n, m } = pattern('isNM', p);
  return native.nmIsNM(mask, n, m);
}

/**
 * The SR-STE gradient for training N:M sparse weights from scratch (Zhou et
 * al. 2021, "Learning N:M Fine-grained Structured Sparse Neural Networks From
 * Scratch", ICLR 2021 — sparse-refined straight-through estimator): the dense weights `W` get the straight-through gradient of
 * the masked weights plus a decay that pulls pruned weights toward 0,
 *
 *   grad + λ · (1 − mask) ⊙ W
 *
 * with `mask` the current N:M mask (e.g. `nmMask(W, {n, m})`). All three
 * tensors share a shape; `out` may be given (and may alias `grad`).
 */
export function srsteGrad(
  grad: Float32Tensor,
  W: Float32Tensor,
  mask: Float32Tensor,
  lambda: number,
  options?: { out?: Float32Array | null },
): Float32Tensor {
  return native.srsteGrad(grad, W, mask, lambda, options);
}

/** True when `{n, m}` has kernels specialised at compile time (else a generic kernel runs). */
export function isTunedPattern(p: NMPattern): boolean {
  const { n, m } = pattern('isTunedPattern', p);
  return native.nmIsTuned(n, m);
}

export interface NMLinearOptions {
  /** `[out]` added before the activation. */
  bias?: Float32Array | Float32Tensor | null;
  /** Fused into the store: `none` (default), `relu`, `gelu` (erf), `gelu_tanh`, `silu`. */
  activation?: ActivationName;
  /** Write the result here (length ≥ tokens·out) instead of allocating. */
  out?: Float32Array | null;
}

/**
 * Validates and copies `W` once into the layout the N:M kernels read, for the
 * instruction set active now: the same values and packed index bits, but in
 * panels of 4 rows whose chunks of 8 values (and their index bytes)
 * interleave, so the kernels stream a panel as one contiguous run. Pass the
 * result to `nmLinear` / `nmLinearTransposed` instead of `W`.
 */
export function prepackNM(W: NMSparseMatrix | NMParts): PackedNMLinear {
  return native.prepackNM(W);
}

/**
 * `y = act(x·Wᵀ + bias)` with `x: [tokens, in]` and `W` an `[out, in]` N:M
 * matrix (or its `prepackNM` form): `y: [tokens, out]`.
 *
 * @example
 * const W = NMSparseMatrix.prune(dense, { n: 2, m: 4 }).prepack();
 * const y = nmLinear(x, W, { bias, activation: 'gelu' });
 */
export function nmLinear(x: Float32Tensor, W: NMSparseMatrix | NMParts | PackedNMLinear, options?: NMLinearOptions): Float32Tensor {
  return native.nmLinear(x, W, options);
}

/**
 * Same as {@link nmLinear}, off the event loop. Arguments are checked before
 * it starts; do not modify `x`, `W` or `out` until the promise settles.
 */
export function nmLinearAsync(
  x: Float32Tensor,
  W: NMSparseMatrix | NMParts | PackedNMLinear,
  options?: NMLinearOptions,
): Promise<Float32Tensor> {
  return native.nmLinearAsync(x, W, options);
}

/**
 * Grouped N:M experts: for each expert e, rows `expertOffsets[e] … expertOffsets[e+1]`
 * of `xs: [rows, in]` times `experts[e]ᵀ`, in one call that schedules the tiles
 * of every expert across the thread pool (no per-expert barrier; empty experts
 * cost nothing). Each expert's tokens are packed once and, when gated, shared
 * by its gate and up products, which a task computes for the same block of
 * rows and combines in cache. Every expert must be a `PackedNMLinear` of the
 * same shape and pattern (`prepackNM`). Decode-sized groups (at most a few
 * rows per expert) run the row-streaming kernel expert by expert. With
 * `gated` and `down`, the expert block's down projection runs in the same call
 * (see `NMGroupedOptions.down`).
 */
export function nmGroupedLinear(
  xs: Float32Tensor,
  expertOffsets: Int32Array,
  experts: readonly PackedNMLinear[],
  options?: NMGroupedOptions,
): Float32Tensor {
  return native.nmGroupedLinear(xs, expertOffsets, experts, options);
}

/**
 * Same as {@link nmGroupedLinear}, off the event loop. Do not modify `xs` or
 * `out` until the promise settles.
 */
export function nmGroupedLinearAsync(
  xs: Float32Tensor,
  expertOffsets: Int32Array,
  experts: readonly PackedNMLinear[],
  options?: NMGroupedOptions,
): Promise<Float32Tensor> {
  return native.nmGroupedLinearAsync(xs, expertOffsets, experts, options);
}

/**
 * `dx = dy·W` with `dy: [tokens, out]` and `W: [out, in]` N:M: `dx: [tokens, in]`
 * (the input gradient of `nmLinear` before its activation).
 */
export function nmLinearTransposed(
  dy: Float32Tensor,
  W: NMSparseMatrix | NMParts | PackedNMLinear,
  options?: { out?: Float32Array | null },
): Float32Tensor {
  return native.nmLinearTransposed(dy, W, options);
}

/** Same as {@link nmLinearTransposed}, off the event loop. */
export function nmLinearTransposedAsync(
  dy: Float32Tensor,
  W: NMSparseMatrix | NMParts | PackedNMLinear,
  options?: { out?: Float32Array | null },
): Promise<Float32Tensor> {
  return native.nmLinearTransposedAsync(dy, W, options);
}
