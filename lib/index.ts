/**
 * sparsekit — sparse kernels for transformers in Node.js.
 *
 * Everything heavy runs in C++ (Node-API) on a persistent thread pool, with
 * kernels for the CPU's best instruction set chosen at load.
 */
import { native, type IsaName, type RawInfo, type ReadBandwidth } from './native';
import { cuda, type CudaBackendInfo } from './cuda';

export { linear, linearAsync, prepackLinear } from './dense';
export type { LinearOptions, ActivationName, PackedLinear } from './dense';
export {
  BlockSparseMatrix,
  prepackBsrLinear,
  bsrLinear,
  bsrLinearAsync,
  bsrGroupedLinear,
  bsrGroupedLinearAsync,
  bsrLinearTransposed,
  bsrLinearTransposedAsync,
  sddmm,
  sddmmAsync,
} from './bsr';
export type { BlockSparseParts, FromDenseOptions, RandomBsrOptions, OutOption, PackedBsrLinear } from './bsr';
export {
  prepackExperts,
  prepackGatedExperts,
  groupedLinear,
  groupedLinearAsync,
  groupedGatedLinear,
  groupedGatedLinearAsync,
  permute,
  permuteAsync,
  combine,
  combineAsync,
  expertsForward,
  expertsForwardAsync,
  glu,
  gluAsync,
} from './experts';
export type { PackedExperts, ExpertPlan, GroupedOptions, ExpertsForwardOptions } from './experts';
export {
  route,
  routeAsync,
  routeBackward,
  routeBackwardAsync,
  updateSelectionBias,
  routingPresets,
  DEEPSEEK_V3_BIAS_UPDATE_SPEED,
} from './routing';
export type {
  RouteOptions,
  RouteAuxOptions,
  RouteLoss,
  RoutingPlan,
  RouteMode,
  RouteScore,
  GroupScore,
  DropPolicy,
  RoutingPresetName,
} from './routing';
export {
  NMSparseMatrix,
  nmMask,
  isNM,
  srsteGrad,
  isTunedPattern,
  prepackNM,
  nmLinear,
  nmLinearAsync,
  nmLinearTransposed,
  nmLinearTransposedAsync,
  nmGroupedLinear,
  nmGroupedLinearAsync,
} from './nm';
export type { NMPattern, NMParts, Cutlass24, NMLinearOptions, PackedNMLinear } from './nm';
export type { GroupedSparseOptions, NMGroupedOptions } from './sparse-options';
export { cuda, DeviceTensor, DevicePlan, DeviceBsr, DeviceNM, CudaStream, CudaUnavailableError } from './cuda';
export { DeviceMoELayer } from './cuda_moe';
export type { DeviceMoEForward } from './cuda_moe';
export type {
  DeviceDtype,
  CudaBackendInfo,
  CudaBackendStatus,
  CudaLinearOptions,
  CudaGroupedOptions,
  CudaRouteOptions,
  HostPlan,
  StreamOption,
} from './cuda';
export { tensor, zeros, numel, randomTensor } from './tensor';
export type { Tensor, Float32Tensor } from './tensor';
export type { IsaName, ReadBandwidth } from './native';

export interface BackendInfo {
  available: boolean;
  reason: string;
}

export interface SparsekitInfo extends RawInfo {
  /**
   * `cpu` is always available. `cuda` says whether the optional CUDA plugin
   * was found and can run here, and if not why: `status` is one of
   * `disabled`, `no-plugin`, `load-error`, `abi-mismatch`, `no-driver`,
   * `no-gpu`, `unsupported-gpu`, `available`; `reason` says it in words
   * (the device, or what is missing). Asking loads the plugin (once).
   */
  backends: { cpu: BackendInfo; cuda: CudaBackendInfo };
}

/** Version, chosen instruction set (and why), threads, kernels and backends. */
export function info(): SparsekitInfo {
  const raw = native.info();
  return {
    ...raw,
    backends: {
      cpu: { available: true, reason: `${raw.isa} kernels, ${raw.threads} threads` },
      cuda: cuda.info(),
    },
  };
}

/** Sets the size of the native thread pool (default: the machine's cores). */
export function setNumThreads(n: number): void {
  native.setNumThreads(n);
}

/** Current size of the native thread pool. */
export function getNumThreads(): number {
  return native.getNumThreads();
}

/**
 * Measures how fast the thread pool streams memory: every pool thread sums
 * its share of a `megabytes` buffer (default 256, 16…4096; far larger than
 * the caches), `passes` times (default 9) after one warm-up pass. Decode-sized
 * calls (one token) are bound by reading their weights once, so
 * `weightBytes / (medianGBps · 1e9)` is the time they cannot beat here; the
 * benchmarks compare against it. Blocks the calling thread (~0.1–1 s).
 */
export function measureReadBandwidth(options: { megabytes?: number; passes?: number } = {}): ReadBandwidth {
  if (options === null || typeof options !== 'object')
    throw new TypeError(`measureReadBandwidth: options must be an object, got ${options === null ? 'null' : typeof options}`);
  return native.measureReadBandwidth(options.megabytes, options.passes);
}

/**
 * Forces an instruction set for kernels run from now on (for tests and
 * comparisons; `SPARSEKIT_ISA` does the same at load). Throws `RangeError` if
 * the CPU cannot run it. Weights packed earlier keep the kernel they were
 * packed for.
 */
export function setIsa(isa: IsaName): void {
  native.setIsa(isa);
}

export { loadSafetensors, saveSafetensors, SafetensorsFile, SafetensorsError, MAX_HEADER_BYTES } from './safetensors';
export type { TensorInfo, TensorToSave } from './safetensors';

export { MoELayer, moePresets } from './moe';
export type { MoEConfig, MoEWeights, MoEArchitecture, MoEPresetName, MoEForwardResult, MoEForwardOptions, TensorSource, FromCheckpointOptions, CheckpointScheme } from './moe';
export { SparseExperts, sparseExpertsForward, sparsePlainExpertsForward } from './sparse-experts';
export type { SparseExpertFormat } from './sparse-experts';
