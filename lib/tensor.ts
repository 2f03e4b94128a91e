/**
 * Tensors are plain objects: a typed array and a shape, row-major. No
 * framework, no hidden state: `{ data: Float32Array, shape: [rows, cols] }`.
 */
export interface Tensor<A extends ArrayLike<number> = Float32Array> {
  readonly data: A;
  readonly shape: readonly number[];
}

/** A tensor of float32 values (the dtype every kernel computes in). */
export type Float32Tensor = Tensor<Float32Array>;

/** Number of elements a shape holds. */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * Wraps `data` with a shape, checking that they agree. Pass a plain array to
 * copy it into a new Float32Array.
 */
export function tensor(data: Float32Array | readonly number[], shape: readonly number[]): Float32Tensor {
  const arr = data instanceof Float32Array ? data : Float32Array.from(data);
  for (const [i, d] of shape.entries()) {
    if (!Number.isInteger(d) || d < 1) throw new RangeError(`tensor: shape[${i}] must be a positive integer, got ${d}`);
  }
  if (numel(shape) !== arr.length) {
    throw new RangeError(`tensor: data has ${arr.length} elements but shape [${shape.join(', ')}] needs ${numel(shape)}`);
  }
  return { data: arr, shape: [...shape] };
}

/** A zero-filled float32 tensor. */
export function zeros(shape: readonly number[]): Float32Tensor {
  return tensor(new Float32Array(numel(shape)), shape);
}

/**
 * Deterministic pseudo-random tensor (uniform in [-scale, scale)), for tests,
 * benchmarks and examples. Same seed, same values, on every platform.
 */
export function randomTensor(shape: readonly number[], seed = 1, scale = 1): Float32Tensor {
  const out = new Float32Array(numel(shape));
  let s = seed >>> 0 || 1;
  for (let i = 0; i < out.length; i++) {
    // xorshift32
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return { data: out, shape: [...shape] };
}
