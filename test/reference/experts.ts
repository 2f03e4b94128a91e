/**
 * Float64 references for the MoE expert ops: a per-token, per-expert loop over
 * the weights exactly as the formulas state (the way PyTorch reference MoE
 * code loops over experts), sharing nothing with the kernels.
 */
import { activate, type Act } from './dense';
import { Rng } from './rng';

export interface TestPlan {
  tokens: number;
  k: number;
  experts: number;
  /** [tokens·k] expert of each slot. */
  expertIds: Int32Array;
  /** [tokens·k] combine weight of each slot. */
  weights: Float32Array;
  /** [tokens·k] true where the slot was dropped. */
  dropped: boolean[];
  sortedSlots: Int32Array;
  expertOffsets: Int32Array;
}

/**
 * A random plan: each token picks k distinct experts (biased towards `hot`
 * experts when given, to make uneven and empty groups), random weights, some
 * slots dropped with probability pDrop. sortedSlots groups kept slots by
 * expert, in token order.
 */
export function randomPlan(
  rng: Rng,
  tokens: number,
  experts: number,
  k: number,
  opts: { pDrop?: number; hot?: number[] } = {},
): TestPlan {
  const expertIds = new Int32Array(tokens * k);
  const weights = new Float32Array(tokens * k);
  const dropped: boolean[] = [];
  for (let t = 0; t < tokens; t++) {
    const chosen = new Set<number>();
    for (let j = 0; j < k; j++) {
      let e: number;
      do {
        e = opts.hot && rng.next() < 0.8 ? rng.pick(opts.hot) : rng.int(0, experts - 1);
      } while (chosen.has(e) && chosen.size < experts);
      if (chosen.has(e)) for (e = 0; chosen.has(e); e++);
      chosen.add(e);
      expertIds[t * k + j] = e;
      weights[t * k + j] = rng.next();
      dropped.push(rng.next() < (opts.pDrop ?? 0));
    }
  }
  const groups: number[][] = Array.from({ length: experts }, () => []);
  for (let s = 0; s < tokens * k; s++) if (!dropped[s]) groups[expertIds[s]].push(s);
  const expertOffsets = new Int32Array(experts + 1);
  for (let e = 0; e < experts; e++) expertOffsets[e + 1] = expertOffsets[e] + groups[e].length;
  return { tokens, k, experts, expertIds, weights, dropped, sortedSlots: Int32Array.from(groups.flat()), expertOffsets };
}

function matvec(w: Float32Array, base: number, rows: number, cols: number, x: ArrayLike<number>, xoff: number): Float64Array {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let acc = 0;
    for (let c = 0; c < cols; c++) acc += w[base + r * cols + c] * x[xoff + c];
    y[r] = acc;
  }
  return y;
}

/** Plain expert stack: y[row] = act(W_e · xs[row] + b_e) with e the expert owning the row. */
export function groupedLinearRef(
  xs: Float32Array,
  offsets: Int32Array,
  w: Float32Array,
  experts: number,
  n: number,
  k: number,
  bias: Float32Array | null,
  act: Act,
): Float64Array {
  const rows = offsets[experts];
  const y = new Float64Array(rows * n);
  for (let e = 0; e < experts; e++) {
    for (let r = offsets[e]; r < offsets[e + 1]; r++) {
      const v = matvec(w, e * n * k, n, k, xs, r * k);
      for (let j = 0; j < n; j++) y[r * n + j] = activate(v[j] + (bias ? bias[e * n + j] : 0), act);
    }
  }
  return y;
}

/** Gated: h[row] = act(W1_e · xs[row]) ⊙ (W3_e · xs[row]). */
export function groupedGatedRef(
  xs: Float32Array,
  offsets: Int32Array,
  w1: Float32Array,
  w3: Float32Array,
  experts: number,
  n: number,
  k: number,
  act: Act,
): Float64Array {
  const rows = offsets[experts];
  const y = new Float64Array(rows * n);
  for (let e = 0; e < experts; e++) {
    for (let r = offsets[e]; r < offsets[e + 1]; r++) {
      const g = matvec(w1, e * n * k, n, k, xs, r * k);
      const u = matvec(w3, e * n * k, n, k, xs, r * k);
      for (let j = 0; j < n; j++) y[r * n + j] = activate(g[j], act) * u[j];
    }
  }
  return y;
}

/** The whole expert block per token: y[t] = Σ_j w[t,j] · W2_e (act(W1_e x_t) ⊙ W3_e x_t), dropped slots skipped. */
export function expertsForwardRef(
  x: Float32Array,
  d: number,
  plan: TestPlan,
  w1: Float32Array,
  w3: Float32Array,
  w2: Float32Array,
  ffn: number,
  act: Act,
): Float64Array {
  const y = new Float64Array(plan.tokens * d);
  for (let t = 0; t < plan.tokens; t++) {
    for (let j = 0; j < plan.k; j++) {
      const s = t * plan.k + j;
      if (plan.dropped[s]) continue;
      const e = plan.expertIds[s];
      const g = matvec(w1, e * ffn * d, ffn, d, x, t * d);
      const u = matvec(w3, e * ffn * d, ffn, d, x, t * d);
      const h = new Float64Array(ffn);
      for (let i = 0; i < ffn; i++) h[i] = activate(g[i], act) * u[i];
      const o = matvec(w2, e * d * ffn, d, ffn, h, 0);
      for (let i = 0; i < d; i++) y[t * d + i] += plan.weights[s] * o[i];
    }
  }
  return y;
}
