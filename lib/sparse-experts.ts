/**
 * Expert stacks whose matrices are pruned: block-sparse (BSR) or N:M. The MoE
 * block's experts run with the same permute → gate/up → GLU → down → combine
 * pipeline as dense experts, each expert's products on the sparse kernels.
 *
 * Gated experts keep gate and up as one `[2·ffn, d]` matrix per expert (gate
 * rows first), so each expert's tokens are read once for both products. For
 * BSR the density applies to that stacked matrix: its strongest blocks are
 * kept, wherever they fall (gate or up).
 *
 * Both formats run grouped: BSR in two `bsrGroupedLinear` calls, every
 * expert's gate/up product with the gating fused, then the down product; N:M
 * in one `nmGroupedLinear` call with `down`, the gated product handed to the
 * down kernel in its packed layout (no per-expert calls, no full intermediate
 * of both products).
 * Only BSR experts whose ffn is not whole block rows fall back to one
 * `bsrLinear` per expert with `glu` between gate/up and down.
 */
import { BlockSparseMatrix, bsrGroupedLinear, bsrLinear, prepackBsrLinear, type PackedBsrLinear } from './bsr';
import { combine, glu, permute, type ExpertPlan } from './experts';
import type { ActivationName } from './native';
import { NMSparseMatrix, nmGroupedLinear, nmLinear, prepackNM, type PackedNMLinear } from './nm';
import type { GroupedSparseOptions } from './sparse-options';
import type { Float32Tensor } from './tensor';

export type SparseExpertFormat =
  | { format: 'bsr'; blockSize: number | readonly [number, number]; density: number }
  | { format: 'nm'; n: number; m: number };

type Packed = PackedBsrLinear | PackedNMLinear;

/** E sparse weight matrices `[out, in]`, pruned from a dense `[E, out, in]` stack and packed. */
export class SparseExperts {
  readonly numExperts: number;
  readonly outFeatures: number;
  readonly inFeatures: number;
  readonly spec: Readonly<SparseExpertFormat>;
  /** Fraction of the dense weights kept (values only). */
  readonly density: number;
  private readonly packed: Packed[];

  private constructor(spec: SparseExpertFormat, E: number, out: number, inF: number, packed: Packed[], density: number) {
    this.spec = spec;
    this.numExperts = E;
    this.outFeatures = out;
    this.inFeatures = inF;
    this.packed = packed;
    this.density = density;
  }

  /** Prunes each expert of `W: [E, out, in]` (magnitude: strongest blocks, or N largest per group of M). */
  static prune(W: Float32Tensor, spec: SparseExpertFormat): SparseExperts {
    if (!W || !(W.data instanceof Float32Array) || !Array.isArray(W.shape) || W.shape.length !== 3)
      throw new TypeError('SparseExperts.prune: W must be a tensor { data: Float32Array, shape: [experts, out, in] }');
    const [E, out, inF] = W.shape;
    const packed: Packed[] = [];
    let kept = 0;
    for (let e = 0; e < E; e++) {
      const We = { data: W.data.subarray(e * out * inF, (e + 1) * out * inF), shape: [out, inF] };
      if (spec.format === 'bsr') {
        const bs = typeof spec.blockSize === 'number' ? [spec.blockSize, spec.blockSize] : spec.blockSize;
        const B = BlockSparseMatrix.fromDense(We, { blockSize: bs, density: spec.density });
        kept += B.values.length;
        packed.push(prepackBsrLinear(B));
      } else if (spec.format === 'nm') {
        const N = NMSparseMatrix.prune(We, { n: spec.n, m: spec.m });
        kept += (out * inF * spec.n) / spec.m;
        packed.push(prepackNM(N));
      } else {
        throw new RangeError(`SparseExperts.prune: format must be 'bsr' or 'nm', got '${String((spec as { format: unknown }).format)}'`);
      }
    }
    return new SparseExperts(spec, E, out, inF, packed, kept / (E * out * inF));
  }

  /**
   * Every expert at once over `xs` grouped by `expertOffsets` (see
   * `nmGroupedLinear` / `bsrGroupedLinear`): plain `act(xs·W_eᵀ)`, or with
   * `gated` the stacked gate/up product `act(gate) ⊙ up`.
   */
  grouped(
    xs: Float32Tensor,
    expertOffsets: Int32Array,
    options: GroupedSparseOptions = {},
  ): Float32Tensor {
    return this.spec.format === 'nm'
      ? nmGroupedLinear(xs, expertOffsets, this.packed as PackedNMLinear[], options)
      : bsrGroupedLinear(xs, expertOffsets, this.packed as PackedBsrLinear[], options);
  }

  /**
   * N:M stacks only: this gate/up stack's gated product and `down`'s
   * projection in one `nmGroupedLinear` call (see `NMGroupedOptions.down`):
   * `[rows, d]`.
   */
  groupedGatedDown(
    xs: Float32Tensor,
    expertOffsets: Int32Array,
    down: SparseExperts,
    options: { activation?: ActivationName; out?: Float32Array } = {},
  ): Float32Tensor {
    if (this.spec.format !== 'nm' || down.spec.format !== 'nm')
      throw new TypeError('SparseExperts.groupedGatedDown: both stacks must be N:M (format "nm")');
    return nmGroupedLinear(xs, expertOffsets, this.packed as PackedNMLinear[], {
      gated: true,
      activation: options.activation,
      down: down.packed as PackedNMLinear[],
      out: options.out,
    });
  }

  /** `act(x·W_eᵀ + bias)` for one expert's rows. */
  linear(
    e: number,
    x: Float32Tensor,
    options: { out?: Float32Array; bias?: Float32Array | null; activation?: ActivationName } = {},
  ): Float32Tensor {
    const p = this.packed[e];
    return this.spec.format === 'bsr' ? bsrLinear(x, p as PackedBsrLinear, options) : nmLinear(x, p as PackedNMLinear, options);
  }
}

/**
 * Intermediate buffers of sparseExpertsForward, kept per gate/up stack and
 * grown as needed, so that steady-state calls do not allocate (and zero) tens
 * of megabytes each. Only the synchronous path uses them; the result is a
 * fresh array unless the caller passes `out`.
 */
const scratchOf = new WeakMap<SparseExperts, Map<string, Float32Array>>();
function scratch(owner: SparseExperts, name: string, n: number): Float32Array {
  let m = scratchOf.get(owner);
  if (!m) scratchOf.set(owner, (m = new Map()));
  let b = m.get(name);
  if (!b || b.length < n) m.set(name, (b = new Float32Array(n)));
  return b.subarray(0, n);
}

/** `out`: a Float32Array of exactly T·d floats to write the result into. */
function outOf(fn: string, out: Float32Array | null | undefined, n: number): Float32Array | undefined {
  if (out === undefined || out === null) return undefined;
  if (!(out instanceof Float32Array)) throw new TypeError(`${fn}: options.out must be a Float32Array`);
  if (out.length !== n) throw new RangeError(`${fn}: options.out has ${out.length} floats, the result needs ${n}`);
  return out;
}

/**
 * The MoE expert block on sparse experts: `gateUp` holds `[E, 2·ffn, d]`
 * (gate rows, then up rows), `down` holds `[E, d, ffn]`. With `out` (T·d
 * floats) the result is written there and no output is allocated.
 */
export function sparseExpertsForward(
  x: Float32Tensor,
  plan: ExpertPlan,
  gateUp: SparseExperts,
  down: SparseExperts,
  options: { activation?: ActivationName; out?: Float32Array | null } = {},
): Float32Tensor {
  const T = x.shape[0];
  const d = x.shape[1];
  const E = gateUp.numExperts;
  if (down.numExperts !== E || gateUp.inFeatures !== d || down.outFeatures !== d || down.inFeatures * 2 !== gateUp.outFeatures)
    throw new RangeError(
      `sparseExpertsForward: gateUp [${E}, ${gateUp.outFeatures}, ${gateUp.inFeatures}] and down [${down.numExperts}, ${down.outFeatures}, ${down.inFeatures}] do not form [E, 2·ffn, d] / [E, d, ffn] for d = ${d}`,
    );
  if (plan.expertOffsets.length !== E + 1) throw new RangeError(`sparseExpertsForward: plan.expertOffsets must have ${E + 1} entries`);
  const out = outOf('sparseExpertsForward', options.out, T * d);
  const rows = plan.sortedSlots.length;
  if (rows === 0) return { data: out ? out.fill(0) : new Float32Array(T * d), shape: [T, d] };
  const xs = permute(x, plan, { out: scratch(gateUp, 'xs', rows * d) });
  const act = options.activation ?? 'silu';
  const f = down.inFeatures;
  const ys = scratch(gateUp, 'ys', rows * d);
  // Grouped (one call per projection, gating fused) unless a BSR gate/up
  // split would cut through block rows (ffn not a multiple of the block height).
  const gs = gateUp.spec;
  const blockRows = gs.format === 'bsr' ? (typeof gs.blockSize === 'number' ? gs.blockSize : gs.blockSize[0]) : 1;
  if (gs.format === 'nm' && down.spec.format === 'nm') {
    // Both projections in one call: h never leaves the kernels' packed layout.
    return combine(gateUp.groupedGatedDown(xs, plan.expertOffsets, down, { activation: act, out: ys }), plan, { out });
  }
  if (gs.format === down.spec.format && f % blockRows === 0) {
    const h = gateUp.grouped(xs, plan.expertOffsets, { gated: true, activation: act, out: scratch(gateUp, 'h', rows * f) });
    return combine(down.grouped(h, plan.expertOffsets, { out: ys }), plan, { out });
  }
  // Scratch for the largest expert's gate/up product and its GLU, reused by every expert.
  let most = 0;
  for (let e = 0; e < E; e++) most = Math.max(most, plan.expertOffsets[e + 1] - plan.expertOffsets[e]);
  const guBuf = scratch(gateUp, 'gu', most * 2 * f);
  const hBuf = scratch(gateUp, 'h', most * f);
  for (let e = 0; e < E; e++) {
    const r0 = plan.expertOffsets[e];
    const r1 = plan.expertOffsets[e + 1];
    if (r1 === r0) continue;
    const xe = { data: xs.data.subarray(r0 * d, r1 * d), shape: [r1 - r0, d] };
    const h = glu(gateUp.linear(e, xe, { out: guBuf }), { activation: act, out: hBuf });
    down.linear(e, h, { out: ys.subarray(r0 * d, r1 * d) });
  }
  return combine({ data: ys, shape: [rows, d] }, plan, { out });
}

/** Plain (non-gated) experts on sparse weights: `W2 act(W1 x + b1) + b2` (`out` as in sparseExpertsForward). */
export function sparsePlainExpertsForward(
  x: Float32Tensor,
  plan: ExpertPlan,
  w1: SparseExperts,
  w2: SparseExperts,
  options: { activation?: ActivationName; b1?: Float32Array | null; b2?: Float32Array | null; out?: Float32Array | null } = {},
): Float32Tensor {
  const T = x.shape[0];
  const d = x.shape[1];
  const f = w1.outFeatures;
  const out = outOf('sparsePlainExpertsForward', options.out, T * d);
  const rows = plan.sortedSlots.length;
  if (rows === 0) return { data: out ? out.fill(0) : new Float32Array(T * d), shape: [T, d] };
  const xs = permute(x, plan);
  const ys = new Float32Array(rows * d);
  for (let e = 0; e < w1.numExperts; e++) {
    const r0 = plan.expertOffsets[e];
    const r1 = plan.expertOffsets[e + 1];
    if (r1 === r0) continue;
    const xe = { data: xs.data.subarray(r0 * d, r1 * d), shape: [r1 - r0, d] };
    const h = w1.linear(e, xe, { activation: options.activation ?? 'none', bias: options.b1 ? options.b1.subarray(e * f, (e + 1) * f) : null });
    w2.linear(e, h, { out: ys.subarray(r0 * d, r1 * d), bias: options.b2 ? options.b2.subarray(e * d, (e + 1) * d) : null });
  }
  return combine({ data: ys, shape: [rows, d] }, plan, { out });
}
