/**
 * Dense linear layer: `y = act(x·Wᵀ + b)` in fp32.
 *
 * - `x`: `[tokens, in]`; `W`: `[out, in]` (PyTorch `nn.Linear` layout, loads
 *   from checkpoints without transposing); `y`: `[tokens, out]`.
 * - Packed, cache-blocked, register-tiled micro-kernels for the CPU's best
 *   instruction set, multi-threaded over output tiles. Results are bitwise
 *   identical for any thread count.
 */
import { native, type ActivationName, type PackedLinear } from './native';
import type { Float32Tensor } from './tensor';

export type { ActivationName, PackedLinear };

export interface LinearOptions {
  /** `[out]` added before the activation. */
  bias?: Float32Array | Float32Tensor | null;
  /** Fused into the store: `none` (default), `relu`, `gelu` (erf), `gelu_tanh`, `silu`. */
  activation?: ActivationName;
  /** Write the result here (length ≥ tokens·out) instead of allocating. */
  out?: Float32Array | null;
}

/**
 * Packs `W: [out, in]` once into the layout the dense kernel reads; pass the
 * result to `linear` instead of `W` to skip packing on every call. It is
 * packed for the instruction set active now and always runs with that kernel.
 */
export function prepackLinear(W: Float32Tensor): PackedLinear {
  return native.prepackLinear(W);
}

/**
 * `y = act(x·Wᵀ + bias)`. Throws `TypeError`/`RangeError` naming the argument
 * when shapes, lengths or options are wrong.
 *
 * @example
 * const y = linear(x, W, { bias, activation: 'gelu' });
 */
export function linear(x: Float32Tensor, W: Float32Tensor | PackedLinear, options?: LinearOptions): Float32Tensor {
  return native.linear(x, W, options);
}

/**
 * Same as {@link linear}, computed off the event loop. Arguments are checked
 * before it starts (a bad argument throws synchronously, like `linear`); do
 * not modify `x`, `W` or `out` until the promise settles.
 */
export function linearAsync(
  x: Float32Tensor,
  W: Float32Tensor | PackedLinear,
  options?: LinearOptions,
): Promise<Float32Tensor> {
  return native.linearAsync(x, W, options);
}
