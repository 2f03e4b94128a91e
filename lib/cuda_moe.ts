/**
 * An MoE block on the GPU: the same block as a CPU {@link MoELayer} (router,
 * routed experts, shared experts), with every weight uploaded once and every
 * step on the device: router projection → cuda.route → permute → grouped
 * (gated) experts → combine, plus the shared experts.
 *
 * ```ts
 * const layer = MoELayer.fromCheckpoint(file, { … });   // CPU layer
 * const gpu = cuda.moeLayer(layer, { dtype: 'bf16' });   // weights uploaded once
 * const { y, plan } = gpu.forward(cuda.toDevice(x, { dtype: 'bf16' }));
 * ```
 *
 * The router must be one the GPU runs: dropless top-k (the Mixtral, Qwen and
 * DeepSeek presets; their training losses are not computed). Capacity,
 * expert-choice, hash and noisy routers stay on the CPU: constructing throws.
 */
import { cuda, DevicePlan, DeviceTensor, routeOptionsForGpu, type CudaRouteOptions, type StreamOption } from './cuda';
import { native } from './native';
import type { MoELayer } from './moe';
import type { Float32Tensor } from './tensor';

export interface DeviceMoEForward {
  /** `[T, dModel]`, in the layer's dtype. */
  y: DeviceTensor;
  /** The routing plan (on the device; `plan.toHost()` for ids and counts). Dispose it when done. */
  plan: DevicePlan;
}

function splitGateUp(t: Float32Tensor, E: number, f: number, d: number): [Float32Array, Float32Array] {
  const gate = new Float32Array(E * f * d), up = new Float32Array(E * f * d);
  for (let e = 0; e < E; e++) {
    gate.set(t.data.subarray(e * 2 * f * d, e * 2 * f * d + f * d), e * f * d);
    up.set(t.data.subarray(e * 2 * f * d + f * d, (e + 1) * 2 * f * d), e * f * d);
  }
  return [gate, up];
}

export class DeviceMoELayer {
  readonly layer: MoELayer;
  readonly dtype: 'f32' | 'bf16';
  private readonly tensors: DeviceTensor[] = [];
  private readonly router: DeviceTensor;
  private readonly routeOptions: CudaRouteOptions;
  private readonly gate?: DeviceTensor;
  private readonly up?: DeviceTensor;
  private readonly w1?: DeviceTensor;
  private readonly b1?: DeviceTensor;
  private readonly down: DeviceTensor;
  private readonly b2?: DeviceTensor;
  private readonly shared?: { gate: DeviceTensor; up: DeviceTensor; down: DeviceTensor; gateW?: DeviceTensor };
  private sharedPlan?: DevicePlan;
  #disposed = false;

  /** Use {@link cuda.moeLayer}. */
  constructor(layer: MoELayer, options: { dtype?: 'f32' | 'bf16' } & StreamOption = {}) {
    const fn = 'cuda.moeLayer';
    const dtype = options.dtype ?? 'f32';
    if (dtype !== 'f32' && dtype !== 'bf16') throw new RangeError(`${fn}: options.dtype must be 'f32' or 'bf16', got ${String(dtype)}`);
    this.layer = layer;
    this.dtype = dtype;
    const { dModel: d, dFF: f, numExperts: E } = layer.config;
    const w = layer.denseWeights;
    const stream = options.stream;
    const up = (t: { data: Float32Array; shape: readonly number[] }, dt: 'f32' | 'bf16' = dtype) => {
      const dev = cuda.toDevice(t, { dtype: dt, stream });
      this.tensors.push(dev);
      return dev;
    };
    try {
      const { selectionBias, ...rest } = layer.routerOptions;
      const bias = selectionBias ? up({ data: selectionBias instanceof Float32Array ? selectionBias : selectionBias.data, shape: [E] }, 'f32') : undefined;
      const ro: CudaRouteOptions = { ...(rest as CudaRouteOptions), aux: undefined, selectionBias: bias } as CudaRouteOptions;
      try {
        routeOptionsForGpu(fn, ro);
      } catch (e) {
        throw new RangeError(`${fn}: this layer's router cannot run on the GPU: ${(e as Error).message}`);
      }
      this.routeOptions = ro;
      this.router = up(w.router);
      if (layer.architecture.gated) {
        if (w.gateUp) {
          const [g, u] = splitGateUp(w.gateUp, E, f, d);
          this.gate = up({ data: g, shape: [E, f, d] });
          this.up = up({ data: u, shape: [E, f, d] });
        } else {
          this.gate = up(w.gate!);
          this.up = up(w.up!);
        }
      } else {
        this.w1 = up(w.w1!);
        if (w.b1) this.b1 = up(w.b1, 'f32');
        if (w.b2) this.b2 = up(w.b2, 'f32');
      }
      this.down = up(w.down);
      if (w.shared && (layer.architecture.sharedExperts ?? 0) > 0) {
        const s = w.shared;
        const sf = s.gate.shape[0];
        this.shared = {
          gate: up({ data: s.gate.data, shape: [1, sf, d] }),
          up: up({ data: s.up.data, shape: [1, sf, d] }),
          down: up({ data: s.down.data, shape: [1, d, sf] }),
          gateW: layer.architecture.sharedExpertGate && w.sharedGate ? up(w.sharedGate) : undefined,
        };
      }
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /** Device memory held by the weights. */
  get bytes(): number {
    return this.tensors.reduce((a, t) => a + t.bytes, 0);
  }

  /** Runs the block on `x: [tokens, dModel]` (a DeviceTensor of the layer's dtype); everything stays on the GPU. */
  forward(x: DeviceTensor, options?: StreamOption): DeviceMoEForward {
    return this.run(x, options, false) as DeviceMoEForward;
  }

  /** {@link forward}, resolving once the GPU has computed it. */
  forwardAsync(x: DeviceTensor, options?: StreamOption): Promise<DeviceMoEForward> {
    return this.run(x, options, true) as Promise<DeviceMoEForward>;
  }

  private run(x: DeviceTensor, options: StreamOption | undefined, async: boolean): DeviceMoEForward | Promise<DeviceMoEForward> {
    const fn = async ? 'DeviceMoELayer.forwardAsync' : 'DeviceMoELayer.forward';
    if (this.#disposed) throw new Error(`${fn}: the layer was disposed`);
    if (!(x instanceof DeviceTensor)) throw new TypeError(`${fn}: x must be a DeviceTensor [tokens, dModel]`);
    if (x.shape.length !== 2 || x.shape[1] !== this.layer.config.dModel)
      throw new RangeError(`${fn}: x.shape [${x.shape.join(', ')}] must be [tokens, dModel = ${this.layer.config.dModel}]`);
    if (x.dtype !== this.dtype) throw new TypeError(`${fn}: x is ${x.dtype} but the layer is ${this.dtype}`);
    const stream = options?.stream;
    const T = x.shape[0];
    const act = this.layer.architecture.activation;
    const logits = cuda.linear(x, this.router, { outDtype: 'f32', stream });
    let plan: DevicePlan;
    try {
      plan = cuda.route(logits, { ...this.routeOptions, stream });
    } finally {
      logits.dispose();
    }
    let y: DeviceTensor;
    try {
      if (this.gate && this.up) {
        y = cuda.expertsForward(x, plan, { gate: this.gate, up: this.up, down: this.down }, { activation: act, stream });
      } else {
        const xs = cuda.permute(x, plan, { stream });
        const h = cuda.groupedLinear(xs, plan, this.w1!, { bias: this.b1, activation: act, stream });
        xs.dispose();
        const ys = cuda.groupedLinear(h, plan, this.down, { bias: this.b2, stream });
        h.dispose();
        y = cuda.combine(ys, plan, { stream });
        ys.dispose();
      }
      if (this.shared) {
        if (!this.sharedPlan || this.sharedPlan.tokens !== T) {
          this.sharedPlan?.dispose();
          // Every token through the one shared MLP: a one-expert plan over all rows.
          this.sharedPlan = cuda.toDevicePlan({
            sortedSlots: Int32Array.from({ length: T }, (_, i) => i),
            expertOffsets: Int32Array.of(0, T),
            weights: new Float32Array(T).fill(1),
            k: 1,
          }, { stream });
        }
        const sh = cuda.groupedGatedLinear(x, this.sharedPlan, this.shared.gate, this.shared.up, { activation: act, stream });
        const s = cuda.groupedLinear(sh, this.sharedPlan, this.shared.down, { stream });
        sh.dispose();
        const g = this.shared.gateW ? cuda.linear(x, this.shared.gateW, { outDtype: 'f32', stream }) : null;
        native.cudaAddRowsInto(y.handle, s.handle, g ? g.handle : null, { stream: stream?.handle });
        s.dispose();
        g?.dispose();
      }
    } catch (e) {
      plan.dispose();
      throw e;
    }
    if (!async) return { y, plan };
    return cuda.synchronize(stream).then(() => ({ y, plan }));
  }

  /** Frees the weights on the device. */
  dispose(): void {
    this.#disposed = true;
    for (const t of this.tensors) t.dispose();
    this.sharedPlan?.dispose();
  }
}
