/**
 * The only file that touches the raw addon. It loads the prebuilt binary for
 * this platform (prebuilds/<platform>-<arch>/) or a local build (build/Release)
 * through node-gyp-build, and gives it one typed interface.
 *
 * The raw functions validate every argument themselves (the C++ binding is the
 * safety boundary), so calling them directly with garbage throws, never crashes.
 */
import * as path from 'node:path';
import type { Float32Tensor } from './tensor';
import type { PackedExperts, ExpertPlan } from './experts';
import type { RouteOptions, RoutingPlan } from './routing';

export type ActivationName = 'none' | 'relu' | 'gelu' | 'gelu_tanh' | 'silu';
export type IsaName = 'scalar' | 'avx2' | 'avx512' | 'neon';

/** Opaque weight packed once for the dense kernel (see prepackLinear). */
export interface PackedLinear {
  readonly outFeatures: number;
  readonly inFeatures: number;
  /** Instruction set whose kernel layout it was packed for. */
  readonly isa: IsaName;
  /** Name of the micro-kernel that will run it, e.g. f32-gemm-6x16-avx2-fma. */
  readonly kernel: string;
  /** Bytes of packed weight held in native memory. */
  readonly bytes: number;
}

/** Opaque N:M weight packed once for the N:M kernels (see prepackNM). */
export interface PackedNMLinear {
  /** Rows of W (out). */
  readonly outFeatures: number;
  /** Columns of W (in). */
  readonly inFeatures: number;
  readonly n: number;
  readonly m: number;
  /** Instruction set whose kernels it was packed for. */
  readonly isa: IsaName;
  /** Kernel that will run it, e.g. f32-nm2:4-avx2 (f32-nm-generic-avx2 for untuned patterns). */
  readonly kernel: string;
  /** Bytes held in native memory (with alignment padding). */
  readonly bytes: number;
  /** Bytes of weight a call reads from memory: values and index data, once. */
  readonly bytesPerCall: number;
}

/** What the N:M functions accept as a matrix: NMSparseMatrix has exactly these fields. */
export interface NativeNMParts {
  rows: number;
  cols: number;
  n: number;
  m: number;
  values: Float32Array;
  indices: Uint8Array;
}

export interface NativeLinearOptions {
  bias?: Float32Array | Float32Tensor | null;
  activation?: ActivationName;
  out?: Float32Array | null;
}

/** Options of the grouped sparse-experts ops (nmGroupedLinear, bsrGroupedLinear). */
export interface NativeGroupedSparseOptions {
  gated?: boolean;
  activation?: ActivationName;
  out?: Float32Array | null;
  /** nmGroupedLinear only: the down projection chained after the gated product. */
  down?: readonly PackedNMLinear[];
}

/** Opaque block-sparse weight packed once for the bsrLinear kernel (see prepackBsrLinear). */
export interface PackedBsrLinear {
  readonly outFeatures: number;
  readonly inFeatures: number;
  readonly blockSize: [number, number];
  readonly nnzBlocks: number;
  /** Kept blocks / all blocks. */
  readonly density: number;
  /** Instruction set whose kernel layout it was packed for. */
  readonly isa: IsaName;
  /** Name of the kernel that will run it, e.g. f32-bsr-6x16-avx2-fma. */
  readonly kernel: string;
  /**
   * Bytes held in native memory (values and structure) when packed; the first
   * bsrLinearTransposed call adds a transposed copy of the same size.
   */
  readonly bytes: number;
}

/** What the raw binding reads from a block-sparse argument (BlockSparseMatrix is one). */
export interface RawBsr {
  readonly shape: readonly number[];
  readonly blockSize: readonly number[];
  readonly rowPtr: Int32Array;
  readonly colIdx: Int32Array;
  readonly values?: Float32Array;
}

export interface RawBsrParts {
  rowPtr: Int32Array;
  colIdx: Int32Array;
  values: Float32Array;
}

export interface RawInfo {
  version: string;
  isa: IsaName;
  isaReason: string;
  supportedIsas: IsaName[];
  compiledIsas: IsaName[];
  threads: number;
  kernels: { dense: string; routing?: string; bsr: string; nm?: string };
  cpu: Record<string, boolean>;
}

/** What {@link measureReadBandwidth} measured. */
export interface ReadBandwidth {
  /** Median over the passes, GB/s (1e9 bytes per second). */
  medianGBps: number;
  /** Fastest pass, GB/s. */
  bestGBps: number;
  megabytes: number;
  passes: number;
  /** Pool threads that read. */
  threads: number;
}

export interface NativeBinding extends NativeCudaBinding {
  info(): RawInfo;
  setNumThreads(n: number): void;
  getNumThreads(): number;
  setIsa(isa: IsaName): void;
  measureReadBandwidth(megabytes?: number, passes?: number): ReadBandwidth;
  prepackLinear(w: Float32Tensor): PackedLinear;
  linear(x: Float32Tensor, w: Float32Tensor | PackedLinear, options?: NativeLinearOptions): Float32Tensor;
  linearAsync(x: Float32Tensor, w: Float32Tensor | PackedLinear, options?: NativeLinearOptions): Promise<Float32Tensor>;
  bsrValidate(parts: RawBsr, fnName?: string): void;
  bsrToDense(w: RawBsr): Float32Array;
  bsrTranspose(w: RawBsr): RawBsrParts;
  bsrFromDense(w: Float32Tensor, blockSize: readonly number[], options?: { density?: number; threshold?: number }): RawBsrParts;
  bsrFromMask(w: Float32Tensor, blockMask: { data: Uint8Array; shape: readonly number[] }): RawBsrParts & { blockSize: [number, number] };
  prepackBsrLinear(w: RawBsr): PackedBsrLinear;
  bsrLinear(x: Float32Tensor, w: RawBsr | PackedBsrLinear, options?: NativeLinearOptions): Float32Tensor;
  bsrLinearAsync(x: Float32Tensor, w: RawBsr | PackedBsrLinear, options?: NativeLinearOptions): Promise<Float32Tensor>;
  bsrGroupedLinear(xs: Float32Tensor, expertOffsets: Int32Array, experts: readonly PackedBsrLinear[], options?: NativeGroupedSparseOptions): Float32Tensor;
  bsrGroupedLinearAsync(
    xs: Float32Tensor,
    expertOffsets: Int32Array,
    experts: readonly PackedBsrLinear[],
    options?: NativeGroupedSparseOptions,
  ): Promise<Float32Tensor>;
  bsrLinearTransposed(dy: Float32Tensor, w: RawBsr | PackedBsrLinear, options?: { out?: Float32Array | null }): Float32Tensor;
  bsrLinearTransposedAsync(
    dy: Float32Tensor,
    w: RawBsr | PackedBsrLinear,
    options?: { out?: Float32Array | null },
  ): Promise<Float32Tensor>;
  sddmm(a: Float32Tensor, b: Float32Tensor, mask: RawBsr, options?: { out?: Float32Array | null }): Float32Array;
  sddmmAsync(a: Float32Tensor, b: Float32Tensor, mask: RawBsr, options?: { out?: Float32Array | null }): Promise<Float32Array>;

  prepackExperts(w: Float32Tensor, options?: { bias?: Float32Tensor | null }): PackedExperts;
  prepackGatedExperts(gate: Float32Tensor, up?: Float32Tensor): PackedExperts;
  groupedLinear(xs: Float32Tensor, offsets: Int32Array, w: PackedExperts, options?: GroupedNativeOptions): Float32Tensor;
  groupedLinearAsync(xs: Float32Tensor, offsets: Int32Array, w: PackedExperts, options?: GroupedNativeOptions): Promise<Float32Tensor>;
  groupedGatedLinear(xs: Float32Tensor, offsets: Int32Array, w: PackedExperts, options?: GroupedNativeOptions): Float32Tensor;
  groupedGatedLinearAsync(xs: Float32Tensor, offsets: Int32Array, w: PackedExperts, options?: GroupedNativeOptions): Promise<Float32Tensor>;
  permute(x: Float32Tensor, sortedSlots: Int32Array, k: number, options?: { out?: Float32Array | null }): Float32Tensor;
  permuteAsync(x: Float32Tensor, sortedSlots: Int32Array, k: number, options?: { out?: Float32Array | null }): Promise<Float32Tensor>;
  combine(ys: Float32Tensor, sortedSlots: Int32Array, weights: Float32Array, k: number, options?: { out?: Float32Array | null }): Float32Tensor;
  combineAsync(ys: Float32Tensor, sortedSlots: Int32Array, weights: Float32Array, k: number, options?: { out?: Float32Array | null }): Promise<Float32Tensor>;
  glu(h: Float32Tensor, options?: GroupedNativeOptions): Float32Tensor;
  gluAsync(h: Float32Tensor, options?: GroupedNativeOptions): Promise<Float32Tensor>;
  expertsForward(x: Float32Tensor, plan: ExpertPlan, gateUp: PackedExperts, down: PackedExperts, options?: GroupedNativeOptions): Float32Tensor;
  expertsForwardAsync(x: Float32Tensor, plan: ExpertPlan, gateUp: PackedExperts, down: PackedExperts, options?: GroupedNativeOptions): Promise<Float32Tensor>;

  route(logits: Float32Tensor, options?: RouteOptions): RoutingPlan;
  routeAsync(logits: Float32Tensor, options?: RouteOptions): Promise<RoutingPlan>;
  routeBackward(
    logits: Float32Tensor,
    plan: Pick<RoutingPlan, 'expertIds' | 'k'>,
    gradWeights: Float32Array,
    options?: RouteOptions,
  ): Float32Tensor;
  routeBackwardAsync(
    logits: Float32Tensor,
    plan: Pick<RoutingPlan, 'expertIds' | 'k'>,
    gradWeights: Float32Array,
    options?: RouteOptions,
  ): Promise<Float32Tensor>;
  updateSelectionBias(bias: Float32Array | Float32Tensor, tokensPerExpert: Int32Array, gamma: number): Float32Array;
  nmPrune(w: Float32Tensor, n: number, m: number): { values: Float32Array; indices: Uint8Array };
  nmFromMask(w: Float32Tensor, mask: Float32Tensor, n: number, m: number): { values: Float32Array; indices: Uint8Array };
  nmValidate(parts: NativeNMParts): void;
  nmToDense(parts: NativeNMParts): Float32Tensor;
  nmMaskOf(parts: NativeNMParts): Float32Tensor;
  nmPruneMask(w: Float32Tensor, n: number, m: number): Float32Tensor;
  nmIsNM(a: Float32Tensor, n: number, m: number): boolean;
  nmIsTuned(n: number, m: number): boolean;
  srsteGrad(grad: Float32Tensor, w: Float32Tensor, mask: Float32Tensor, lambda: number, options?: { out?: Float32Array | null }): Float32Tensor;
  nmRandom(rows: number, cols: number, n: number, m: number, seed: number, scale: number): { values: Float32Array; indices: Uint8Array };
  nmToCutlass24(parts: NativeNMParts, dtype: 'float16' | 'bfloat16'): { values: Uint16Array; meta: Int16Array };
  nmFromCutlass24(values: Uint16Array, meta: Int16Array | Uint16Array, rows: number, cols: number, dtype: 'float16' | 'bfloat16'): { values: Float32Array; indices: Uint8Array };
  prepackNM(parts: NativeNMParts): PackedNMLinear;
  nmLinear(x: Float32Tensor, w: NativeNMParts | PackedNMLinear, options?: NativeLinearOptions): Float32Tensor;
  nmLinearAsync(x: Float32Tensor, w: NativeNMParts | PackedNMLinear, options?: NativeLinearOptions): Promise<Float32Tensor>;
  nmLinearTransposed(dy: Float32Tensor, w: NativeNMParts | PackedNMLinear, options?: { out?: Float32Array | null }): Float32Tensor;
  nmLinearTransposedAsync(dy: Float32Tensor, w: NativeNMParts | PackedNMLinear, options?: { out?: Float32Array | null }): Promise<Float32Tensor>;
  nmGroupedLinear(xs: Float32Tensor, expertOffsets: Int32Array, experts: readonly PackedNMLinear[], options?: NativeGroupedSparseOptions): Float32Tensor;
  nmGroupedLinearAsync(
    xs: Float32Tensor,
    expertOffsets: Int32Array,
    experts: readonly PackedNMLinear[],
    options?: NativeGroupedSparseOptions,
  ): Promise<Float32Tensor>;
}

/** Opaque native objects of the CUDA backend (see lib/cuda.ts for the typed wrappers). */
export interface NativeDeviceBuffer {
  readonly shape: readonly number[];
  readonly dtype: 'f32' | 'bf16' | 'i32';
  readonly bytes: number;
}
export interface NativeDevicePlan {
  readonly tokens: number;
  readonly k: number;
  readonly numExperts: number;
  readonly rows: number;
  readonly fromRoute: boolean;
}
export interface NativeDeviceBsr {
  readonly shape: readonly [number, number];
  readonly blockSize: readonly [number, number];
  readonly nnzBlocks: number;
  readonly dtype: 'f32' | 'bf16';
}
export interface NativeDeviceNM {
  readonly shape: readonly [number, number];
  readonly n: number;
  readonly m: number;
  readonly dtype: 'f32' | 'bf16';
  readonly layout: 'cutlass-2:4' | 'values+indices';
}
export type NativeCudaStream = object;

export interface RawCudaInfo {
  available: boolean;
  status: 'disabled' | 'no-plugin' | 'load-error' | 'abi-mismatch' | 'no-driver' | 'no-gpu' | 'unsupported-gpu' | 'available';
  reason: string;
  abi: number;
  plugin?: string;
  pluginAbi?: number;
  searched: string[];
  runtimeVersion?: number;
  driverVersion?: number;
  device?: { name: string; sm: number; multiprocessors: number; memory: number; count: number };
  kernels?: string;
}

type Opts = Record<string, unknown> | undefined;

export interface NativeCudaBinding {
  cudaInfo(): RawCudaInfo;
  cudaSetOption(name: string, value: number | boolean): void;
  cudaMemoryStats(): { liveTensors: number; liveBytes: number };
  cudaCreateStream(): NativeCudaStream;
  cudaSynchronize(stream?: NativeCudaStream): void;
  cudaSynchronizeAsync(stream?: NativeCudaStream): Promise<void>;
  cudaToDevice(x: { data: Float32Array | Uint16Array | Int32Array; shape: readonly number[] }, options?: Opts): NativeDeviceBuffer;
  cudaZeros(shape: readonly number[], dtype: string, options?: Opts): NativeDeviceBuffer;
  cudaRandom(shape: readonly number[], options?: Opts): NativeDeviceBuffer;
  cudaToHost(x: NativeDeviceBuffer, options?: Opts): { data: Float32Array | Int32Array | Uint16Array; shape: number[] };
  cudaToHostAsync(x: NativeDeviceBuffer, options?: Opts): Promise<{ data: Float32Array | Int32Array | Uint16Array; shape: number[] }>;
  cudaDispose(x: object): void;
  cudaLinear(x: NativeDeviceBuffer, w: NativeDeviceBuffer, options?: Opts): NativeDeviceBuffer;
  cudaLinearAsync(x: NativeDeviceBuffer, w: NativeDeviceBuffer, options?: Opts): Promise<NativeDeviceBuffer>;
  cudaToDevicePlan(plan: { sortedSlots: Int32Array; expertOffsets: Int32Array; weights: Float32Array; k: number }, options?: Opts): NativeDevicePlan;
  cudaPlanToHost(plan: NativeDevicePlan): Record<string, unknown>;
  cudaPlanToHostAsync(plan: NativeDevicePlan): Promise<Record<string, unknown>>;
  cudaRoute(logits: NativeDeviceBuffer, options: Opts): NativeDevicePlan;
  cudaRouteAsync(logits: NativeDeviceBuffer, options: Opts): Promise<NativeDevicePlan>;
  cudaGroupedLinear(xs: NativeDeviceBuffer, plan: NativeDevicePlan, w: NativeDeviceBuffer, options?: Opts): NativeDeviceBuffer;
  cudaGroupedLinearAsync(xs: NativeDeviceBuffer, plan: NativeDevicePlan, w: NativeDeviceBuffer, options?: Opts): Promise<NativeDeviceBuffer>;
  cudaGroupedGatedLinear(xs: NativeDeviceBuffer, plan: NativeDevicePlan, gate: NativeDeviceBuffer, up: NativeDeviceBuffer, options?: Opts): NativeDeviceBuffer;
  cudaGroupedGatedLinearAsync(xs: NativeDeviceBuffer, plan: NativeDevicePlan, gate: NativeDeviceBuffer, up: NativeDeviceBuffer, options?: Opts): Promise<NativeDeviceBuffer>;
  cudaPermute(x: NativeDeviceBuffer, plan: NativeDevicePlan, options?: Opts): NativeDeviceBuffer;
  cudaPermuteAsync(x: NativeDeviceBuffer, plan: NativeDevicePlan, options?: Opts): Promise<NativeDeviceBuffer>;
  cudaCombine(ys: NativeDeviceBuffer, plan: NativeDevicePlan, options?: Opts): NativeDeviceBuffer;
  cudaCombineAsync(ys: NativeDeviceBuffer, plan: NativeDevicePlan, options?: Opts): Promise<NativeDeviceBuffer>;
  cudaAddRowsInto(y: NativeDeviceBuffer, s: NativeDeviceBuffer, gate: NativeDeviceBuffer | null, options?: Opts): void;
  cudaToDeviceBsr(w: object, options?: Opts): NativeDeviceBsr;
  cudaBsrValues(w: NativeDeviceBsr): NativeDeviceBuffer;
  cudaBsrLinear(x: NativeDeviceBuffer, w: NativeDeviceBsr, options?: Opts): NativeDeviceBuffer;
  cudaBsrLinearAsync(x: NativeDeviceBuffer, w: NativeDeviceBsr, options?: Opts): Promise<NativeDeviceBuffer>;
  cudaSddmm(a: NativeDeviceBuffer, b: NativeDeviceBuffer, mask: NativeDeviceBsr, options?: Opts): NativeDeviceBsr;
  cudaSddmmAsync(a: NativeDeviceBuffer, b: NativeDeviceBuffer, mask: NativeDeviceBsr, options?: Opts): Promise<NativeDeviceBsr>;
  cudaPackCutlass24(w: Float32Tensor): { values: Uint16Array; meta: Int16Array };
  cudaToDeviceNM24(w: object, options?: Opts): NativeDeviceNM;
  cudaToDeviceNM(w: object, options?: Opts): NativeDeviceNM;
  cudaNMLinear(x: NativeDeviceBuffer, w: NativeDeviceNM, options?: Opts): NativeDeviceBuffer;
  cudaNMLinearAsync(x: NativeDeviceBuffer, w: NativeDeviceNM, options?: Opts): Promise<NativeDeviceBuffer>;
}

export interface GroupedNativeOptions {
  activation?: ActivationName;
  out?: Float32Array | null;
}

function load(): NativeBinding {
  const root = path.join(__dirname, '..');
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const gypBuild = require('node-gyp-build') as (dir: string) => unknown;
  return gypBuild(root) as NativeBinding;
}

/** The raw addon. Prefer the typed wrappers exported from the package root. */
export const native: NativeBinding = load();
