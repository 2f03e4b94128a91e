/**
 * The CUDA backend: device tensors and the same ops as the CPU, on an NVIDIA
 * GPU, through the optional plugin `libsparsekit_cuda.so`.
 *
 * The plugin is opened at run time. Without it, without a CUDA driver or
 * without a GPU everything still runs on the CPU, `info().backends.cuda` says
 * why, and every function here throws a {@link CudaUnavailableError} with
 * that same reason.
 *
 * Usage:
 * ```ts
 * import { cuda } from 'sparsekit';
 * const x = cuda.toDevice(xHost, { dtype: 'bf16' });   // [tokens, in]
 * const W = cuda.toDevice(wHost, { dtype: 'bf16' });   // [out, in]
 * const y = cuda.linear(x, W, { activation: 'gelu' }); // enqueued; y stays on the GPU
 * const h = await cuda.linearAsync(y, W2);             // resolves when the GPU is done
 * console.log(h.toHost().data);                        // Float32Array
 * x.dispose(); W.dispose(); y.dispose(); h.dispose();  // or let the GC do it
 * ```
 *
 * Semantics:
 * - **Where data lives.** `cuda.*` ops take device objects and return device
 *   objects; nothing is copied to the host until `toHost()`. Weights uploaded
 *   once stay on the GPU between calls.
 * - **Dtypes.** `f32` or `bf16` storage (bf16 rounded to nearest even on
 *   upload), accumulation in f32, bias in f32. Outputs default to the input's
 *   dtype; `outDtype` picks the other.
 * - **Ordering.** Every op is enqueued on a stream (the default one, or
 *   `options.stream` from {@link cuda.createStream}) and the sync form returns
 *   at once; the `…Async` form resolves when the stream has finished the op
 *   (and everything before it). Work on different streams is ordered where a
 *   tensor passes from one to the other: a tensor's next use waits for its
 *   last one. `toHost()` waits for the tensor's producer.
 * - **Memory.** `dispose()` frees a device object at once in stream order (it
 *   is safe right after enqueueing an op that reads it); using it afterwards
 *   throws. Objects that are never disposed are freed when garbage-collected
 *   (a FinalizationRegistry, counted in {@link cuda.memoryStats}).
 * - **Validation.** Shapes and dtypes are checked before anything is
 *   enqueued. Index structures (routing plans, block-sparse and N:M
 *   metadata) reach the GPU only through the `toDevice…` constructors, which
 *   validate them on the host as the CPU ops do, or from {@link cuda.route}.
 */
import {
  native,
  type ActivationName,
  type NativeCudaStream,
  type NativeDeviceBsr,
  type NativeDeviceBuffer,
  type NativeDeviceNM,
  type NativeDevicePlan,
  type RawCudaInfo,
} from './native';
import type { Float32Tensor, Tensor } from './tensor';
import type { MoELayer } from './moe';
import type { NMParts } from './nm';
import type { DeviceMoELayer } from './cuda_moe';

export type DeviceDtype = 'f32' | 'bf16' | 'i32';
export type CudaBackendStatus = RawCudaInfo['status'];
export type CudaBackendInfo = RawCudaInfo;

/** Thrown by every `cuda.*` function when the backend cannot be used; `reason` is `info().backends.cuda.reason`. */
export class CudaUnavailableError extends Error {
  readonly status: CudaBackendStatus;
  readonly reason: string;
  constructor(fn: string, info: RawCudaInfo) {
    super(`${fn}: CUDA is not available: ${info.reason}`);
    this.name = 'CudaUnavailableError';
    this.status = info.status;
    this.reason = info.reason;
  }
}

let cachedInfo: RawCudaInfo | undefined;
function backendInfo(): RawCudaInfo {
  // The plugin is loaded once per process; its state does not change after.
  if (!cachedInfo) cachedInfo = native.cudaInfo();
  return cachedInfo;
}

function requireCuda(fn: string): void {
  const i = backendInfo();
  if (!i.available) throw new CudaUnavailableError(fn, i);
}

// ---- lifetime ----------------------------------------------------------------------------

let finalizedUndisposed = 0;
const registry = new FinalizationRegistry<object>((handle) => {
  finalizedUndisposed++;
  try {
    native.cudaDispose(handle);
  } catch {
    // Already disposed, or the backend is gone at exit: nothing left to free.
  }
});

abstract class DeviceObject<H extends object> {
  /** @internal the native handle; pass the wrapper, not this, to `cuda.*`. */
  readonly handle: H;
  #disposed = false;
  protected constructor(handle: H) {
    this.handle = handle;
    registry.register(this, handle, this);
  }
  /** True after {@link dispose}. */
  get disposed(): boolean {
    return this.#disposed;
  }
  /** Frees the device memory now (in stream order: work already enqueued still sees it). Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    registry.unregister(this);
    native.cudaDispose(this.handle);
  }
}

function unwrap<H extends object>(fn: string, name: string, v: unknown, cls: abstract new (...a: never[]) => DeviceObject<H>, what: string): H {
  if (!(v instanceof cls)) {
    throw new TypeError(`${fn}: ${name} must be a ${what}, got ${describe(v)}`);
  }
  if (v.disposed) throw new Error(`${fn}: ${name} was disposed`);
  return v.handle;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (Array.isArray(v)) return 'an array';
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name}`;
  if (typeof v === 'object') return `an object (${(v as object).constructor?.name ?? 'Object'})`;
  return `a ${typeof v}`;
}

/** A stream: ops enqueued on it run in order; different streams may overlap. */
export class CudaStream {
  /** @internal */
  readonly handle: NativeCudaStream;
  /** @internal use {@link cuda.createStream}. */
  constructor(handle: NativeCudaStream) {
    this.handle = handle;
  }
  /** Resolves when everything enqueued on this stream so far has finished. */
  synchronize(): Promise<void> {
    return native.cudaSynchronizeAsync(this.handle);
  }
  /** Blocks until everything enqueued on this stream so far has finished. */
  synchronizeSync(): void {
    native.cudaSynchronize(this.handle);
  }
}

/** A tensor in GPU memory: `[…shape]` of `f32`, `bf16` or `i32`, row-major. */
export class DeviceTensor extends DeviceObject<NativeDeviceBuffer> {
  /** @internal use {@link cuda.toDevice} or a `cuda.*` op. */
  constructor(handle: NativeDeviceBuffer) {
    super(handle);
  }
  get shape(): readonly number[] {
    return this.handle.shape;
  }
  get dtype(): DeviceDtype {
    return this.handle.dtype;
  }
  /** Bytes of device memory held. */
  get bytes(): number {
    return this.handle.bytes;
  }
  /** Copies to the host, waiting for the op that produced it: f32 and bf16 as a Float32Array, i32 as an Int32Array. */
  toHost(): Float32Tensor | Tensor<Int32Array> {
    requireCuda('DeviceTensor.toHost');
    return native.cudaToHost(unwrap('DeviceTensor.toHost', 'this', this, DeviceTensor, 'DeviceTensor')) as Float32Tensor;
  }
  /** Same as {@link toHost}, waiting off the event loop. */
  toHostAsync(): Promise<Float32Tensor | Tensor<Int32Array>> {
    requireCuda('DeviceTensor.toHostAsync');
    return native.cudaToHostAsync(unwrap('DeviceTensor.toHostAsync', 'this', this, DeviceTensor, 'DeviceTensor')) as Promise<Float32Tensor>;
  }
  /** A bf16 tensor's raw bits (Uint16Array), for checkpoints and exact comparisons. */
  toHostRaw(): Tensor<Uint16Array> | Float32Tensor | Tensor<Int32Array> {
    requireCuda('DeviceTensor.toHostRaw');
    return native.cudaToHost(unwrap('DeviceTensor.toHostRaw', 'this', this, DeviceTensor, 'DeviceTensor'), { raw: true }) as Tensor<Uint16Array>;
  }
}

/** The routing plan arrays on the host (what {@link DevicePlan.toHost} returns). */
export interface HostPlan {
  sortedSlots: Int32Array;
  expertOffsets: Int32Array;
  weights: Float32Array;
  /** Only for plans made by {@link cuda.route}. */
  expertIds?: Int32Array;
  tokensPerExpert?: Int32Array;
  k: number;
  tokens: number;
  numExperts: number;
}

/**
 * A routing plan on the GPU: `sortedSlots`, `expertOffsets`, `weights` (and,
 * from {@link cuda.route}, `expertIds` and `tokensPerExpert`), plus the
 * inverse permutation the combine step reads.
 */
export class DevicePlan extends DeviceObject<NativeDevicePlan> {
  /** @internal */
  constructor(handle: NativeDevicePlan) {
    super(handle);
  }
  get tokens(): number {
    return this.handle.tokens;
  }
  get k(): number {
    return this.handle.k;
  }
  get numExperts(): number {
    return this.handle.numExperts;
  }
  /** Kept slots (rows of the permuted batch). */
  get rows(): number {
    return this.handle.rows;
  }
  toHost(): HostPlan {
    requireCuda('DevicePlan.toHost');
    return native.cudaPlanToHost(unwrap('DevicePlan.toHost', 'this', this, DevicePlan, 'DevicePlan')) as unknown as HostPlan;
  }
  toHostAsync(): Promise<HostPlan> {
    requireCuda('DevicePlan.toHostAsync');
    return native.cudaPlanToHostAsync(unwrap('DevicePlan.toHostAsync', 'this', this, DevicePlan, 'DevicePlan')) as unknown as Promise<HostPlan>;
  }
}

/** A block-sparse (BSR) matrix on the GPU. */
export class DeviceBsr extends DeviceObject<NativeDeviceBsr> {
  /** @internal */
  constructor(handle: NativeDeviceBsr) {
    super(handle);
  }
  get shape(): readonly [number, number] {
    return this.handle.shape;
  }
  get blockSize(): readonly [number, number] {
    return this.handle.blockSize;
  }
  get nnzBlocks(): number {
    return this.handle.nnzBlocks;
  }
  get dtype(): 'f32' | 'bf16' {
    return this.handle.dtype;
  }
  /** The kept blocks' values `[nnzBlocks, blockRows, blockCols]` as a host tensor. */
  valuesToHost(): Float32Tensor {
    requireCuda('DeviceBsr.valuesToHost');
    const v = native.cudaBsrValues(unwrap('DeviceBsr.valuesToHost', 'this', this, DeviceBsr, 'DeviceBsr'));
    try {
      return native.cudaToHost(v) as Float32Tensor;
    } finally {
      native.cudaDispose(v);
    }
  }
}

/** An N:M sparse matrix on the GPU (2:4 bf16 in the sparse tensor-core layout, or values + indices). */
export class DeviceNM extends DeviceObject<NativeDeviceNM> {
  /** @internal */
  constructor(handle: NativeDeviceNM) {
    super(handle);
  }
  get shape(): readonly [number, number] {
    return this.handle.shape;
  }
  get n(): number {
    return this.handle.n;
  }
  get m(): number {
    return this.handle.m;
  }
  get dtype(): 'f32' | 'bf16' {
    return this.handle.dtype;
  }
  /** `cutlass-2:4`: runs on sparse tensor cores (mma.sp); `values+indices`: CUDA cores. */
  get layout(): 'cutlass-2:4' | 'values+indices' {
    return this.handle.layout;
  }
}

// ---- options ----------------------------------------------------------------------------------

export interface StreamOption {
  /** Stream to enqueue on (default: this process's default stream). */
  stream?: CudaStream;
}
export interface CudaLinearOptions extends StreamOption {
  /** f32 DeviceTensor `[out]`. */
  bias?: DeviceTensor | null;
  activation?: ActivationName;
  /** Output dtype (default: the input's). */
  outDtype?: 'f32' | 'bf16';
}
export interface CudaGroupedOptions extends StreamOption {
  /** Plain stacks only: f32 DeviceTensor `[experts, out]`. */
  bias?: DeviceTensor | null;
  /** Plain: fused into the store (default none). Gated: applied to the gate product (default silu). */
  activation?: ActivationName;
  outDtype?: 'f32' | 'bf16';
}
/**
 * The options of `route()` (same names and meanings) that the GPU kernel
 * supports. A preset works once its training losses are dropped:
 * `cuda.route(logits, { ...routingPresets['deepseek-v3'], aux: undefined, selectionBias })`.
 */
export interface CudaRouteOptions extends StreamOption {
  /** Experts per token (default 1). */
  k?: number;
  score?: 'softmax' | 'sigmoid' | 'none';
  scoreBeforeTopK?: boolean;
  renormalize?: boolean;
  scalingFactor?: number;
  /** `[E]` added for selection only (DeepSeek-V3): a Float32Array, a host tensor or an f32 DeviceTensor. */
  selectionBias?: Float32Array | Float32Tensor | DeviceTensor | null;
  groups?: number;
  topkGroups?: number;
  groupScore?: 'max' | 'sum-top2';
}
const ROUTE_KEYS = new Set(['k', 'score', 'scoreBeforeTopK', 'renormalize', 'scalingFactor', 'selectionBias', 'groups', 'topkGroups', 'groupScore', 'stream']);

function nativeOpts(fn: string, o: object | undefined): Record<string, unknown> | undefined {
  if (o === undefined || o === null) return undefined;
  if (typeof o !== 'object' || Array.isArray(o)) throw new TypeError(`${fn}: options must be an object, got ${describe(o)}`);
  const out: Record<string, unknown> = { ...(o as Record<string, unknown>) };
  const s = out.stream;
  if (s !== undefined && s !== null) {
    if (!(s instanceof CudaStream)) throw new TypeError(`${fn}: options.stream must be a CudaStream, got ${describe(s)}`);
    out.stream = s.handle;
  }
  for (const key of ['bias', 'selectionBias']) {
    const v = out[key];
    if (v instanceof DeviceTensor) out[key] = unwrap(fn, `options.${key}`, v, DeviceTensor, 'DeviceTensor');
  }
  return out;
}

const dev = (fn: string, name: string, v: unknown) => unwrap(fn, name, v, DeviceTensor, 'DeviceTensor (cuda.toDevice)');
const devPlan = (fn: string, v: unknown) => unwrap(fn, 'plan', v, DevicePlan, 'DevicePlan (cuda.toDevicePlan or cuda.route)');

function wrapAsync<H extends object, W>(p: Promise<H>, make: (h: H) => W): Promise<W> {
  return p.then(make);
}

// ---- the namespace --------------------------------------------------------------------------

export const cuda = {
  /** Whether the CUDA backend can be used (plugin, driver and a supported GPU). */
  isAvailable(): boolean {
    return backendInfo().available;
  },

  /** Why (or on what) the backend runs: the object `info().backends.cuda` returns. */
  info(): CudaBackendInfo {
    return { ...backendInfo() };
  },

  /**
   * Test and tuning switches of the plugin: `'wgmma'` (default on: Hopper
   * warpgroup GEMMs where the GPU is sm_90; off: the mma.sync kernels) and
   * `'tma'` (default on: those GEMMs load their tiles with the tensor memory
   * accelerator from a producer warpgroup; off: with cp.async from the
   * consumers). `SPARSEKIT_CUDA_WGMMA=0` / `SPARSEKIT_CUDA_TMA=0` in the
   * environment start with that switch off. `'raster'` (tuning, default 0):
   * row tiles per raster run of the TMA linear kernel (0: all of them).
   * `'epilogue'` (default off; `SPARSEKIT_CUDA_EPILOGUE=1` starts with it on):
   * the TMA kernels' output stage compiled per output type / activation / bias
   * instead of deciding them per element (not yet checked on a GPU).
   */
  setOption(name: 'wgmma' | 'tma' | 'raster' | 'epilogue', value: boolean | number): void {
    requireCuda('cuda.setOption');
    native.cudaSetOption(name, value);
  },

  /** Device memory held by live objects, and how many were freed by the GC rather than `dispose()`. */
  memoryStats(): { liveTensors: number; liveBytes: number; finalizedUndisposed: number } {
    return { ...native.cudaMemoryStats(), finalizedUndisposed };
  },

  createStream(): CudaStream {
    requireCuda('cuda.createStream');
    return new CudaStream(native.cudaCreateStream());
  },

  /** Resolves when everything enqueued on `stream` (default: the default stream) has finished. */
  synchronize(stream?: CudaStream): Promise<void> {
    requireCuda('cuda.synchronize');
    return native.cudaSynchronizeAsync(stream?.handle);
  },

  /** Blocking form of {@link cuda.synchronize}. */
  synchronizeSync(stream?: CudaStream): void {
    requireCuda('cuda.synchronizeSync');
    native.cudaSynchronize(stream?.handle);
  },

  /**
   * Uploads a host tensor. `Float32Array` data becomes `f32` (default) or
   * `bf16` (rounded to nearest even); `Uint16Array` is taken as bf16 bits;
   * `Int32Array` becomes `i32`.
   */
  toDevice(
    x: { data: Float32Array | Uint16Array | Int32Array; shape: readonly number[] },
    options?: { dtype?: DeviceDtype } & StreamOption,
  ): DeviceTensor {
    requireCuda('cuda.toDevice');
    return new DeviceTensor(native.cudaToDevice(x, nativeOpts('cuda.toDevice', options)));
  },

  /** A zero-filled device tensor. */
  zeros(shape: readonly number[], dtype: DeviceDtype = 'f32', options?: StreamOption): DeviceTensor {
    requireCuda('cuda.zeros');
    return new DeviceTensor(native.cudaZeros(shape, dtype, nativeOpts('cuda.zeros', options)));
  },

  /**
   * A tensor of uniform values in `[−scale, scale)` made on the device (no
   * host upload): the same seed gives the same values on every GPU. For
   * benchmarks, tests and initialisation.
   */
  random(shape: readonly number[], options?: { dtype?: 'f32' | 'bf16'; seed?: number; scale?: number } & StreamOption): DeviceTensor {
    requireCuda('cuda.random');
    return new DeviceTensor(native.cudaRandom(shape, nativeOpts('cuda.random', options)));
  },

  /** `y = act(x·Wᵀ + bias)` for `x: [tokens, in]`, `W: [out, in]` (same dtype). Enqueued; returns at once. */
  linear(x: DeviceTensor, W: DeviceTensor, options?: CudaLinearOptions): DeviceTensor {
    const fn = 'cuda.linear';
    requireCuda(fn);
    return new DeviceTensor(native.cudaLinear(dev(fn, 'x', x), dev(fn, 'W', W), nativeOpts(fn, options)));
  },
  /** {@link cuda.linear}, resolving when the GPU has computed it. */
  linearAsync(x: DeviceTensor, W: DeviceTensor, options?: CudaLinearOptions): Promise<DeviceTensor> {
    const fn = 'cuda.linearAsync';
    requireCuda(fn);
    return wrapAsync(native.cudaLinearAsync(dev(fn, 'x', x), dev(fn, 'W', W), nativeOpts(fn, options)), (h) => new DeviceTensor(h));
  },

  /**
   * Uploads a routing plan (`route()`'s result or any `{ sortedSlots,
   * expertOffsets, weights, k }`), validated as the CPU expert ops validate
   * it. Needs at least one kept slot.
   */
  toDevicePlan(
    plan: { sortedSlots: Int32Array; expertOffsets: Int32Array; weights: Float32Array; k: number },
    options?: StreamOption,
  ): DevicePlan {
    requireCuda('cuda.toDevicePlan');
    return new DevicePlan(native.cudaToDevicePlan(plan, nativeOpts('cuda.toDevicePlan', options)));
  },

  /**
   * Top-k routing of `logits: [tokens, experts]` (f32) on the GPU, with the
   * CPU `route()`'s semantics for the options below (dropless; ties to the
   * lower expert). The plan stays on the GPU for permute / the grouped ops /
   * combine. Other `route()` options (capacity, noise, expert choice, hash,
   * losses) are CPU-only: passing one throws.
   */
  route(logits: DeviceTensor, options?: CudaRouteOptions): DevicePlan {
    const fn = 'cuda.route';
    requireCuda(fn);
    return new DevicePlan(native.cudaRoute(dev(fn, 'logits', logits), routeOpts(fn, options)));
  },
  routeAsync(logits: DeviceTensor, options?: CudaRouteOptions): Promise<DevicePlan> {
    const fn = 'cuda.routeAsync';
    requireCuda(fn);
    return wrapAsync(native.cudaRouteAsync(dev(fn, 'logits', logits), routeOpts(fn, options)), (h) => new DevicePlan(h));
  },

  /** `xs[i] = x[sortedSlots[i] / k]`: tokens into expert order. */
  permute(x: DeviceTensor, plan: DevicePlan, options?: StreamOption): DeviceTensor {
    const fn = 'cuda.permute';
    requireCuda(fn);
    return new DeviceTensor(native.cudaPermute(dev(fn, 'x', x), devPlan(fn, plan), nativeOpts(fn, options)));
  },
  permuteAsync(x: DeviceTensor, plan: DevicePlan, options?: StreamOption): Promise<DeviceTensor> {
    const fn = 'cuda.permuteAsync';
    requireCuda(fn);
    return wrapAsync(native.cudaPermuteAsync(dev(fn, 'x', x), devPlan(fn, plan), nativeOpts(fn, options)), (h) => new DeviceTensor(h));
  },

  /** Per expert e: rows `expertOffsets[e] … expertOffsets[e+1]` of `xs` times `W_eᵀ` (+ bias_e), `W: [E, out, in]`. */
  groupedLinear(xs: DeviceTensor, plan: DevicePlan, W: DeviceTensor, options?: CudaGroupedOptions): DeviceTensor {
    const fn = 'cuda.groupedLinear';
    requireCuda(fn);
    return new DeviceTensor(native.cudaGroupedLinear(dev(fn, 'xs', xs), devPlan(fn, plan), dev(fn, 'W', W), nativeOpts(fn, options)));
  },
  groupedLinearAsync(xs: DeviceTensor, plan: DevicePlan, W: DeviceTensor, options?: CudaGroupedOptions): Promise<DeviceTensor> {
    const fn = 'cuda.groupedLinearAsync';
    requireCuda(fn);
    return wrapAsync(
      native.cudaGroupedLinearAsync(dev(fn, 'xs', xs), devPlan(fn, plan), dev(fn, 'W', W), nativeOpts(fn, options)),
      (h) => new DeviceTensor(h),
    );
  },

  /** `act(xs·W1ₑᵀ) ⊙ (xs·W3ₑᵀ)` per expert; `gate` (W1) and `up` (W3) are `[E, ffn, in]`. */
  groupedGatedLinear(xs: DeviceTensor, plan: DevicePlan, gate: DeviceTensor, up: DeviceTensor, options?: CudaGroupedOptions): DeviceTensor {
    const fn = 'cuda.groupedGatedLinear';
    requireCuda(fn);
    return new DeviceTensor(
      native.cudaGroupedGatedLinear(dev(fn, 'xs', xs), devPlan(fn, plan), dev(fn, 'gate', gate), dev(fn, 'up', up), nativeOpts(fn, options)),
    );
  },
  groupedGatedLinearAsync(
    xs: DeviceTensor,
    plan: DevicePlan,
    gate: DeviceTensor,
    up: DeviceTensor,
    options?: CudaGroupedOptions,
  ): Promise<DeviceTensor> {
    const fn = 'cuda.groupedGatedLinearAsync';
    requireCuda(fn);
    return wrapAsync(
      native.cudaGroupedGatedLinearAsync(dev(fn, 'xs', xs), devPlan(fn, plan), dev(fn, 'gate', gate), dev(fn, 'up', up), nativeOpts(fn, options)),
      (h) => new DeviceTensor(h),
    );
  },

  /** `y[t] = Σⱼ weights[t·k + j] · ys[row of slot t·k + j]` (j in order; dropped slots add 0). */
  combine(ys: DeviceTensor, plan: DevicePlan, options?: { outDtype?: 'f32' | 'bf16' } & StreamOption): DeviceTensor {
    const fn = 'cuda.combine';
    requireCuda(fn);
    return new DeviceTensor(native.cudaCombine(dev(fn, 'ys', ys), devPlan(fn, plan), nativeOpts(fn, options)));
  },
  combineAsync(ys: DeviceTensor, plan: DevicePlan, options?: { outDtype?: 'f32' | 'bf16' } & StreamOption): Promise<DeviceTensor> {
    const fn = 'cuda.combineAsync';
    requireCuda(fn);
    return wrapAsync(native.cudaCombineAsync(dev(fn, 'ys', ys), devPlan(fn, plan), nativeOpts(fn, options)), (h) => new DeviceTensor(h));
  },

  /**
   * permute → gated grouped linear (gate, up) → grouped linear (down) →
   * combine, all on the GPU; intermediates are freed in stream order as soon
   * as they are enqueued. `gate`, `up`: `[E, ffn, d]`; `down`: `[E, d, ffn]`.
   */
  expertsForward(
    x: DeviceTensor,
    plan: DevicePlan,
    experts: { gate: DeviceTensor; up: DeviceTensor; down: DeviceTensor },
    options?: { activation?: ActivationName; outDtype?: 'f32' | 'bf16' } & StreamOption,
  ): DeviceTensor {
    return expertsForwardImpl('cuda.expertsForward', x, plan, experts, options, false) as DeviceTensor;
  },
  expertsForwardAsync(
    x: DeviceTensor,
    plan: DevicePlan,
    experts: { gate: DeviceTensor; up: DeviceTensor; down: DeviceTensor },
    options?: { activation?: ActivationName; outDtype?: 'f32' | 'bf16' } & StreamOption,
  ): Promise<DeviceTensor> {
    return expertsForwardImpl('cuda.expertsForwardAsync', x, plan, experts, options, true) as Promise<DeviceTensor>;
  },

  /**
   * A CPU {@link MoELayer} on the GPU: its weights uploaded once (`f32` or
   * `bf16`), `forward(x)` on device tensors. See lib/cuda_moe.ts.
   */
  moeLayer(layer: MoELayer, options?: { dtype?: 'f32' | 'bf16' } & StreamOption): DeviceMoELayer {
    requireCuda('cuda.moeLayer');
    // Loaded on use: cuda_moe builds on this module.
    const { DeviceMoELayer: Cls } = require('./cuda_moe') as typeof import('./cuda_moe');
    return new Cls(layer, options);
  },

  /**
   * Uploads a block-sparse matrix `{ shape: [rows, cols], blockSize: b | [br, bc],
   * rowPtr, colIdx, values }` (a `BlockSparseMatrix` or its parts), validated
   * as `fromParts` validates. Square blocks of 16, 32 and 64 run tuned
   * kernels (tensor cores for bf16); other shapes a plain one.
   */
  toDeviceBsr(
    W: {
      shape: readonly number[];
      blockSize: number | readonly [number, number];
      rowPtr: Int32Array;
      colIdx: Int32Array;
      values: Float32Array;
    },
    options?: { dtype?: 'f32' | 'bf16' } & StreamOption,
  ): DeviceBsr {
    requireCuda('cuda.toDeviceBsr');
    return new DeviceBsr(native.cudaToDeviceBsr(W, nativeOpts('cuda.toDeviceBsr', options)));
  },

  /** `y = act(x·Wbᵀ + bias)` with `Wb: [out, in]` block-sparse (same dtype as x). */
  bsrLinear(x: DeviceTensor, Wb: DeviceBsr, options?: CudaLinearOptions): DeviceTensor {
    const fn = 'cuda.bsrLinear';
    requireCuda(fn);
    return new DeviceTensor(native.cudaBsrLinear(dev(fn, 'x', x), unwrap(fn, 'W', Wb, DeviceBsr, 'DeviceBsr'), nativeOpts(fn, options)));
  },
  bsrLinearAsync(x: DeviceTensor, Wb: DeviceBsr, options?: CudaLinearOptions): Promise<DeviceTensor> {
    const fn = 'cuda.bsrLinearAsync';
    requireCuda(fn);
    return wrapAsync(
      native.cudaBsrLinearAsync(dev(fn, 'x', x), unwrap(fn, 'W', Wb, DeviceBsr, 'DeviceBsr'), nativeOpts(fn, options)),
      (h) => new DeviceTensor(h),
    );
  },

  /** `(a·bᵀ)` on the kept blocks of `mask` (`[m, n]`), as a DeviceBsr with mask's pattern. */
  sddmm(a: DeviceTensor, b: DeviceTensor, mask: DeviceBsr, options?: { outDtype?: 'f32' | 'bf16' } & StreamOption): DeviceBsr {
    const fn = 'cuda.sddmm';
    requireCuda(fn);
    return new DeviceBsr(native.cudaSddmm(dev(fn, 'a', a), dev(fn, 'b', b), unwrap(fn, 'mask', mask, DeviceBsr, 'DeviceBsr'), nativeOpts(fn, options)));
  },
  sddmmAsync(a: DeviceTensor, b: DeviceTensor, mask: DeviceBsr, options?: { outDtype?: 'f32' | 'bf16' } & StreamOption): Promise<DeviceBsr> {
    const fn = 'cuda.sddmmAsync';
    requireCuda(fn);
    return wrapAsync(
      native.cudaSddmmAsync(dev(fn, 'a', a), dev(fn, 'b', b), unwrap(fn, 'mask', mask, DeviceBsr, 'DeviceBsr'), nativeOpts(fn, options)),
      (h) => new DeviceBsr(h),
    );
  },

  /**
   * Uploads an N:M sparse weight: an {@link NMSparseMatrix} (any N:M), or a
   * dense `W: [out, in]` with at most `options.n` nonzeros in every group of
   * `options.m` along `in`. 2:4 in bf16 with out % 32 == 0 and in % 64 == 0
   * is laid out for the sparse tensor cores (the CUTLASS / PyTorch
   * semi-structured layout, as `toCutlass24('bfloat16')` gives it); anything
   * else runs on CUDA cores from values + in-group indices. Default dtype bf16.
   */
  toDeviceNM(
    W: Float32Tensor | NMParts,
    options?: { n?: number; m?: number; dtype?: 'f32' | 'bf16' } & StreamOption,
  ): DeviceNM {
    requireCuda('cuda.toDeviceNM');
    return new DeviceNM(native.cudaToDeviceNM(W, nativeOpts('cuda.toDeviceNM', options)));
  },

  /**
   * Uploads 2:4 weights already compressed as PyTorch's semi-structured
   * tensors / CUTLASS store them: `values` (bf16 bits, `[out, in/2]`) and
   * `meta` (int16 `[out, in/16]`, reordered), with `shape` or `rows`/`cols`:
   * e.g. `NMSparseMatrix.toCutlass24('bfloat16')`'s result as it is.
   */
  toDeviceNM24(
    W: {
      values: Uint16Array;
      meta: Uint16Array | Int16Array;
      shape?: readonly number[];
      rows?: number;
      cols?: number;
      dtype?: 'bfloat16' | 'float16';
    },
    options?: StreamOption,
  ): DeviceNM {
    requireCuda('cuda.toDeviceNM24');
    return new DeviceNM(native.cudaToDeviceNM24(W, nativeOpts('cuda.toDeviceNM24', options)));
  },

  /**
   * The CUTLASS 2:4 packing (bf16) of a dense 2:4 matrix, on the host (needs
   * no GPU): what {@link cuda.toDeviceNM} uploads for 2:4 bf16.
   */
  packCutlass24(W: Float32Tensor): { values: Uint16Array; meta: Int16Array } {
    return native.cudaPackCutlass24(W);
  },

  /** `y = act(x·Wᵀ + bias)` with W N:M sparse (same dtype as x). */
  nmLinear(x: DeviceTensor, W: DeviceNM, options?: CudaLinearOptions): DeviceTensor {
    const fn = 'cuda.nmLinear';
    requireCuda(fn);
    return new DeviceTensor(native.cudaNMLinear(dev(fn, 'x', x), unwrap(fn, 'W', W, DeviceNM, 'DeviceNM'), nativeOpts(fn, options)));
  },
  nmLinearAsync(x: DeviceTensor, W: DeviceNM, options?: CudaLinearOptions): Promise<DeviceTensor> {
    const fn = 'cuda.nmLinearAsync';
    requireCuda(fn);
    return wrapAsync(
      native.cudaNMLinearAsync(dev(fn, 'x', x), unwrap(fn, 'W', W, DeviceNM, 'DeviceNM'), nativeOpts(fn, options)),
      (h) => new DeviceTensor(h),
    );
  },
};

// route() options that the GPU kernel takes at their default (dropless top-k) value only.
const ROUTE_DEFAULT_ONLY: Record<string, { ok: (v: unknown) => boolean; hint: string }> = {
  mode: { ok: (v) => v === 'top-k', hint: "only 'top-k'" },
  capacityFactor: { ok: (v) => v === 0, hint: 'only 0 (dropless)' },
  jitter: { ok: (v) => v === 0, hint: 'only 0' },
  randomSecondExpert: { ok: (v) => v === false, hint: 'only false' },
  noiseLogits: { ok: (v) => v === null, hint: 'no noise' },
  tokenIds: { ok: (v) => v === null, hint: 'top-k mode only' },
  // irrelevant without dropping / randomness
  dropPolicy: { ok: () => true, hint: '' },
  seed: { ok: () => true, hint: '' },
};

/** @internal checks route() options against what the GPU runs, and converts them for the binding. */
export function routeOptionsForGpu(fn: string, options: CudaRouteOptions | undefined): Record<string, unknown> | undefined {
  return routeOpts(fn, options);
}

function routeOpts(fn: string, options: CudaRouteOptions | undefined): Record<string, unknown> | undefined {
  if (options === undefined || options === null) return undefined;
  if (typeof options !== 'object') throw new TypeError(`${fn}: options must be an object, got ${describe(options)}`);
  const o = options as unknown as Record<string, unknown>;
  const pass: Record<string, unknown> = {};
  for (const key of Object.keys(o)) {
    const v = o[key];
    if (v === undefined) continue;
    if (ROUTE_KEYS.has(key)) {
      pass[key] = v;
    } else if (key === 'aux') {
      if (v !== null && typeof v === 'object' && Object.values(v).some((x) => x !== undefined)) {
        throw new RangeError(
          `${fn}: options.aux (balance losses, for training) is not computed on the GPU; for inference pass { ...options, aux: undefined }, or use route() on the CPU`,
        );
      }
    } else if (key in ROUTE_DEFAULT_ONLY) {
      if (!ROUTE_DEFAULT_ONLY[key].ok(v)) {
        throw new RangeError(`${fn}: options.${key} = ${JSON.stringify(v)} is not supported on the GPU (${ROUTE_DEFAULT_ONLY[key].hint}); use route() on the CPU for it`);
      }
    } else {
      throw new RangeError(`${fn}: options.${key} is not supported on the GPU (supported: ${[...ROUTE_KEYS].join(', ')}); use route() on the CPU for it`);
    }
  }
  const sb = pass.selectionBias as { data?: unknown } | undefined;
  if (sb && !(sb instanceof DeviceTensor) && !(sb instanceof Float32Array) && typeof sb === 'object' && sb.data instanceof Float32Array) {
    pass.selectionBias = sb.data;
  }
  return nativeOpts(fn, pass);
}

function expertsForwardImpl(
  fn: string,
  x: DeviceTensor,
  plan: DevicePlan,
  experts: { gate: DeviceTensor; up: DeviceTensor; down: DeviceTensor },
  options: ({ activation?: ActivationName; outDtype?: 'f32' | 'bf16' } & StreamOption) | undefined,
  async: boolean,
): DeviceTensor | Promise<DeviceTensor> {
  requireCuda(fn);
  if (!experts || typeof experts !== 'object') throw new TypeError(`${fn}: experts must be { gate, up, down }, got ${describe(experts)}`);
  const o = nativeOpts(fn, options) ?? {};
  const stream = o.stream;
  const xs = native.cudaPermute(dev(fn, 'x', x), devPlan(fn, plan), { stream });
  let h: NativeDeviceBuffer | undefined;
  let ys: NativeDeviceBuffer | undefined;
  try {
    h = native.cudaGroupedGatedLinear(xs, plan.handle, dev(fn, 'experts.gate', experts.gate), dev(fn, 'experts.up', experts.up), {
      activation: o.activation,
      stream,
    });
    ys = native.cudaGroupedLinear(h, plan.handle, dev(fn, 'experts.down', experts.down), { stream });
    const combineOpts = { outDtype: o.outDtype, stream };
    if (async) return wrapAsync(native.cudaCombineAsync(ys, plan.handle, combineOpts), (r) => new DeviceTensor(r));
    return new DeviceTensor(native.cudaCombine(ys, plan.handle, combineOpts));
  } finally {
    // Stream-ordered frees: the enqueued kernels still read them.
    native.cudaDispose(xs);
    if (h) native.cudaDispose(h);
    if (ys) native.cudaDispose(ys);
  }
}
