/**
 * Block-sparse matrices (BSR: block-compressed sparse rows) and the three
 * block-sparse products of a pruned linear layer:
 *
 * - `bsrLinear(x, W)`: `y = act(x·Wᵀ + b)` with `W: [out, in]` block-sparse
 *   (inference forward; prepack `W` once with `prepackBsrLinear`);
 * - `bsrLinearTransposed(dy, W)`: `dx = dy·W` (backward data; tied weights);
 * - `sddmm(a, b, mask)`: `a·bᵀ` computed only on the blocks of `mask`
 *   (attention scores on a block pattern; a weight gradient restricted to the
 *   pruned pattern).
 *
 * Work is proportional to the kept blocks: each kept block is a small dense
 * product run by the same register-tiled micro-kernels as `linear`, for the
 * CPU's best instruction set, on the thread pool. Results are bitwise
 * identical for any thread count.
 */
import { native, type PackedBsrLinear, type RawBsr } from './native';
import type { LinearOptions } from './dense';
import type { GroupedSparseOptions } from './sparse-options';
import { randomTensor, type Float32Tensor, type Tensor } from './tensor';

export type { PackedBsrLinear };

/** The arrays that define a block-sparse matrix (see {@link BlockSparseMatrix}). */
export interface BlockSparseParts {
  /** `[rows, cols]` of the dense matrix. */
  shape: readonly number[];
  /** `[blockRows, blockCols]`; must divide `shape`. */
  blockSize: readonly number[];
  /** `[rows / blockRows + 1]`: blocks of block row `R` are `rowPtr[R] .. rowPtr[R+1]-1`. */
  rowPtr: Int32Array;
  /** `[nnzBlocks]`: block column of each kept block, strictly increasing within a block row. */
  colIdx: Int32Array;
  /** `[nnzBlocks · blockRows · blockCols]`: each block row-major, in `colIdx` order. */
  values: Float32Array;
}

export interface FromDenseOptions {
  /** `[blockRows, blockCols]`. */
  blockSize: readonly number[];
  /** Keep `round(density · blocks)` blocks of largest L2 norm (ties: lower block index first). */
  density?: number;
  /** Keep the blocks whose L2 norm is greater than this. */
  threshold?: number;
}

export interface RandomBsrOptions {
  shape: readonly number[];
  blockSize: readonly number[];
  /** Fraction of blocks kept: exactly `round(density · blocks)`, chosen uniformly. */
  density: number;
  /** Same seed, same pattern and values, on every platform. Default 1. */
  seed?: number;
  /** Values are uniform in `[-scale, scale)`. Default 1. */
  scale?: number;
}

const INTERNAL: unique symbol = Symbol('BlockSparseMatrix.internal');

function pair(v: readonly number[]): readonly [number, number] {
  return Object.freeze([v[0], v[1]] as [number, number]);
}

/**
 * A `[rows, cols]` float32 matrix stored as its kept `[blockRows, blockCols]`
 * blocks in block-compressed sparse row form (`rowPtr`, `colIdx`, `values`).
 * Any positive block shape that divides the matrix works; 1×16, 4×1, 8×8,
 * 16×16, 32×32 and 64×64 have tuned kernels.
 *
 * The matrix holds (does not copy) the typed arrays it was built from; every
 * kernel re-checks the structure, so changing them later cannot crash, only
 * change results or make calls throw.
 *
 * @example
 * const Wb = BlockSparseMatrix.fromDense(W, { blockSize: [32, 32], density: 0.1 });
 * const y = bsrLinear(x, prepackBsrLinear(Wb), { bias, activation: 'gelu' });
 */
export class BlockSparseMatrix implements BlockSparseParts {
  readonly shape: readonly [number, number];
  readonly blockSize: readonly [number, number];
  readonly rowPtr: Int32Array;
  readonly colIdx: Int32Array;
  readonly values: Float32Array;

  /**
   * Same as {@link BlockSparseMatrix.fromParts}: the structure is validated
   * and a malformed one throws a `RangeError`/`TypeError` naming the field.
   */
  constructor(parts: BlockSparseParts, internal?: typeof INTERNAL) {
    if (internal !== INTERNAL) native.bsrValidate(parts as RawBsr, 'BlockSparseMatrix');
    this.shape = pair(parts.shape);
    this.blockSize = pair(parts.blockSize);
    this.rowPtr = parts.rowPtr;
    this.colIdx = parts.colIdx;
    this.values = parts.values;
  }

  /** Number of kept blocks. */
  get nnzBlocks(): number {
    return this.colIdx.length;
  }

  /** Block rows (`rows / blockRows`). */
  get numBlockRows(): number {
    return this.shape[0] / this.blockSize[0];
  }

  /** Block columns (`cols / blockCols`). */
  get numBlockCols(): number {
    return this.shape[1] / this.blockSize[1];
  }

  /** Kept blocks / all blocks, in [0, 1]. */
  get density(): number {
    return this.nnzBlocks / (this.numBlockRows * this.numBlockCols);
  }

  /**
   * Validates and wraps existing arrays. Throws `RangeError` when rowPtr does
   * not start at 0, decreases, or does not end at colIdx.length; when a
   * colIdx is out of range or not strictly increasing within its block row;
   * when values.length ≠ nnzBlocks·blockRows·blockCols; or when shape is not
   * divisible by blockSize. `TypeError` when an array has the wrong type.
   */
  static fromParts(parts: BlockSparseParts): BlockSparseMatrix {
    native.bsrValidate(parts as RawBsr, 'BlockSparseMatrix.fromParts');
    return new BlockSparseMatrix(parts, INTERNAL);
  }

  /**
   * Magnitude block pruning of a dense `[rows, cols]` matrix: keeps the
   * `round(density · blocks)` blocks of largest L2 norm, or with `threshold`
   * the blocks whose norm exceeds it; with neither, every block that is not
   * all zeros. `W` must not contain NaN.
   */
  static fromDense(W: Float32Tensor, options: FromDenseOptions): BlockSparseMatrix {
    if (options === null || typeof options !== 'object')
      throw new TypeError(`BlockSparseMatrix.fromDense: options must be an object { blockSize, density | threshold }, got ${typeof options}`);
    const bs = options.blockSize;
    const parts = native.bsrFromDense(W, bs, { density: options.density, threshold: options.threshold });
    return new BlockSparseMatrix({ shape: W.shape, blockSize: bs, ...parts }, INTERNAL);
  }

  /**
   * Keeps the blocks of `W` whose entry in `blockMask` is non-zero. The mask
   * is `[rows / blockRows, cols / blockCols]`; the block shape follows from it.
   */
  static fromMask(W: Float32Tensor, blockMask: Tensor<Uint8Array>): BlockSparseMatrix {
    const { blockSize, ...parts } = native.bsrFromMask(W, blockMask);
    return new BlockSparseMatrix({ shape: W.shape, blockSize, ...parts }, INTERNAL);
  }

  /**
   * A random block-sparse matrix (for tests and benchmarks): exactly
   * `round(density · blocks)` blocks chosen uniformly, values uniform in
   * `[-scale, scale)`. Deterministic for a given seed.
   */
  static random(options: RandomBsrOptions): BlockSparseMatrix {
    const fn = 'BlockSparseMatrix.random';
    if (options === null || typeof options !== 'object') throw new TypeError(`${fn}: options must be an object, got ${typeof options}`);
    const { shape, blockSize, density, seed = 1, scale = 1 } = options;
    for (const [name, v] of [['shape', shape], ['blockSize', blockSize]] as const) {
      if (!Array.isArray(v) || v.length !== 2 || !v.every((d) => Number.isInteger(d) && d >= 1 && d <= 0x7fffffff))
        throw new RangeError(`${fn}: ${name} must be two positive integers, got ${JSON.stringify(v)}`);
    }
    if (shape[0] % blockSize[0] !== 0 || shape[1] % blockSize[1] !== 0)
      throw new RangeError(`${fn}: shape [${shape.join(', ')}] is not divisible by blockSize [${blockSize.join(', ')}]`);
    if (typeof density !== 'number' || !(density >= 0 && density <= 1))
      throw new RangeError(`${fn}: density must be a number in [0, 1], got ${density}`);
    const nbr = shape[0] / blockSize[0];
    const nbc = shape[1] / blockSize[1];
    const total = nbr * nbc;
    const want = Math.floor(density * total + 0.5);
    // Partial Fisher–Yates over block indices with a seeded xorshift32.
    let s = seed >>> 0 || 1;
    const next = () => {
      s ^= s << 13;
      s >>>= 0;
      s ^= s >>> 17;
      s ^= s << 5;
      s >>>= 0;
      return s / 4294967296;
    };
    const keep = new Uint8Array(total);
    if (want * 2 <= total) {
      const chosen = new Map<number, number>();
      for (let i = 0; i < want; i++) {
        const j = i + Math.floor(next() * (total - i));
        const vj = chosen.get(j) ?? j;
        chosen.set(j, chosen.get(i) ?? i);
        keep[vj] = 1;
      }
    } else {
      keep.fill(1);
      const chosen = new Map<number, number>();
      for (let i = 0; i < total - want; i++) {
        const j = i + Math.floor(next() * (total - i));
        const vj = chosen.get(j) ?? j;
        chosen.set(j, chosen.get(i) ?? i);
        keep[vj] = 0;
      }
    }
    const rowPtr = new Int32Array(nbr + 1);
    const colIdx = new Int32Array(want);
    let p = 0;
    for (let R = 0; R < nbr; R++) {
      for (let c = 0; c < nbc; c++) if (keep[R * nbc + c]) colIdx[p++] = c;
      rowPtr[R + 1] = p;
    }
    const values = randomTensor([Math.max(1, want * blockSize[0] * blockSize[1])], seed + 1, scale).data.subarray(
      0,
      want * blockSize[0] * blockSize[1],
    );
    return new BlockSparseMatrix({ shape, blockSize, rowPtr, colIdx, values }, INTERNAL);
  }

  /** The dense `[rows, cols]` matrix (zeros outside the kept blocks). */
  toDense(): Float32Tensor {
    return { data: native.bsrToDense(this), shape: [this.shape[0], this.shape[1]] };
  }

  /** The `[cols, rows]` transpose with block shape `[blockCols, blockRows]`. */
  transpose(): BlockSparseMatrix {
    const parts = native.bsrTranspose(this);
    return new BlockSparseMatrix(
      { shape: [this.shape[1], this.shape[0]], blockSize: [this.blockSize[1], this.blockSize[0]], ...parts },
      INTERNAL,
    );
  }
}

/**
 * Packs a block-sparse `W: [out, in]` once into the layout the bsrLinear
 * kernel reads; pass it to `bsrLinear`/`bsrLinearTransposed` instead of `W`.
 * It is packed for the instruction set active now and always runs with that
 * kernel. The transposed packing `bsrLinearTransposed` needs is built on its
 * first use and kept.
 */
export function prepackBsrLinear(W: BlockSparseMatrix): PackedBsrLinear {
  return native.prepackBsrLinear(W);
}

/**
 * `y = act(x·Wᵀ + bias)` with block-sparse `W: [out, in]`, `x: [tokens, in]`,
 * `y: [tokens, out]`. Throws `TypeError`/`RangeError` naming the argument
 * when shapes, lengths, options or W's structure are wrong.
 */
export function bsrLinear(x: Float32Tensor, W: BlockSparseMatrix | PackedBsrLinear, options?: LinearOptions): Float32Tensor {
  return native.bsrLinear(x, W, options);
}

/**
 * Same as {@link bsrLinear}, computed off the event loop. Arguments are
 * checked before it starts (a bad argument throws synchronously); do not
 * modify `x`, `W.values` or `out` until the promise settles.
 */
export function bsrLinearAsync(
  x: Float32Tensor,
  W: BlockSparseMatrix | PackedBsrLinear,
  options?: LinearOptions,
): Promise<Float32Tensor> {
  return native.bsrLinearAsync(x, W, options);
}

/**
 * Grouped block-sparse experts: for each expert e, rows `expertOffsets[e] … expertOffsets[e+1]`
 * of `xs: [rows, in]` times `experts[e]ᵀ`, in one call: one task per expert
 * and token tile across the thread pool (no per-expert barrier; empty experts
 * cost nothing). With `gated`, each expert's matrix stacks gate rows over up
 * rows (`[2·ffn, in]`, `ffn` a multiple of the block height) and the result is
 * `act(gate) ⊙ up`, `[rows, ffn]`, gated in cache as each up block row is
 * written. Every expert must be a `PackedBsrLinear` of the same shape and
 * block shape. Decode-sized calls (few token tiles) run `bsrLinear`'s kernel
 * expert by expert, which splits each expert's rows over the pool instead.
 */
export function bsrGroupedLinear(
  xs: Float32Tensor,
  expertOffsets: Int32Array,
  experts: readonly PackedBsrLinear[],
  options?: GroupedSparseOptions,
): Float32Tensor {
  return native.bsrGroupedLinear(xs, expertOffsets, experts, options);
}

/** Same as {@link bsrGroupedLinear}, off the event loop. Do not modify `xs` or `out` until the promise settles. */
export function bsrGroupedLinearAsync(
  xs: Float32Tensor,
  expertOffsets: Int32Array,
  experts: readonly PackedBsrLinear[],
  options?: GroupedSparseOptions,
): Promise<Float32Tensor> {
  return native.bsrGroupedLinearAsync(xs, expertOffsets, experts, options);
}

export interface OutOption {
  /** Write the result here (long enough) instead of allocating. */
  out?: Float32Array | null;
}

/** `dx = dy·W` with `dy: [tokens, out]`, block-sparse `W: [out, in]`, `dx: [tokens, in]`. */
export function bsrLinearTransposed(dy: Float32Tensor, W: BlockSparseMatrix | PackedBsrLinear, options?: OutOption): Float32Tensor {
  return native.bsrLinearTransposed(dy, W, options);
}

/** Same as {@link bsrLinearTransposed}, off the event loop. */
export function bsrLinearTransposedAsync(
  dy: Float32Tensor,
  W: BlockSparseMatrix | PackedBsrLinear,
  options?: OutOption,
): Promise<Float32Tensor> {
  return native.bsrLinearTransposedAsync(dy, W, options);
}

function withPattern(mask: BlockSparseParts | RawBsr, rowPtr: Int32Array, colIdx: Int32Array, values: Float32Array) {
  return new BlockSparseMatrix({ shape: mask.shape, blockSize: mask.blockSize, rowPtr, colIdx, values }, INTERNAL);
}

/**
 * Sampled dense–dense product: `C = a·bᵀ` computed only on the blocks of
 * `mask` (its values are ignored), returned as a BlockSparseMatrix with the
 * mask's shape and pattern. `a: [m, k]`, `b: [n, k]`, `mask: [m, n]`.
 * `options.out` receives the values (length ≥ nnzBlocks·blockRows·blockCols).
 */
export function sddmm(a: Float32Tensor, b: Float32Tensor, mask: BlockSparseMatrix, options?: OutOption): BlockSparseMatrix {
  const values = native.sddmm(a, b, mask, options);
  return withPattern(mask, mask.rowPtr.slice(), mask.colIdx.slice(), values);
}

/** Same as {@link sddmm}, off the event loop. */
export function sddmmAsync(
  a: Float32Tensor,
  b: Float32Tensor,
  mask: BlockSparseMatrix,
  options?: OutOption,
): Promise<BlockSparseMatrix> {
  const pending = native.sddmmAsync(a, b, mask, options);
  const rowPtr = mask.rowPtr.slice();
  const colIdx = mask.colIdx.slice();
  return pending.then((values) => withPattern(mask, rowPtr, colIdx, values));
}
