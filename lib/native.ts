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

export interface NativeLinearOptions {
  bias?: Float32Array | Float32Tensor | null;
  activation?: ActivationName;
  out?: Float32Array | null;
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
  /** Bytes held in native memory (values and structure). */
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
  kernels: { dense: string; routing?: string; bsr: string };
  cpu: Record<string, boolean>;
}

export interface NativeBinding {
  info(): RawInfo;
  setNumThreads(n: number): void;
  getNumThreads(): number;
  setIsa(isa: IsaName): void;
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
