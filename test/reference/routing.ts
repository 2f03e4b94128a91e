/**
 * Naive float64 reference of MoE routing, written from the documented
 * semantics (lib/routing.ts) and the papers, sharing no code with the kernel:
 * plain loops, full sorts with explicit comparators, every intermediate in
 * float64. Slow on purpose; only for tests.
 */
import type { RouteOptions } from '../../lib/routing';

export interface RefLoss {
  value: number;
}

export interface RefPlan {
  k: number;
  capacity: number;
  expertIds: Int32Array;
  weights: Float64Array;
  tokensPerExpert: Int32Array;
  expertOffsets: Int32Array;
  sortedSlots: Int32Array;
  dropped: Int32Array;
  aux: Record<string, number>;
}

// ---- the documented counter-based generator ---------------------------------

export function mix32(x: number): number {
  x >>>= 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

export function streamKey(seed: number, stream: number): number {
  const lo = seed % 4294967296;
  const hi = Math.floor(seed / 4294967296);
  const h = mix32((lo + Math.imul(0x9e3779b9, stream)) >>> 0);
  return mix32((h ^ hi) >>> 0);
}

function bits(key: number, a: number, b: number): number {
  return mix32((mix32((key ^ a) >>> 0) ^ b) >>> 0);
}

function uniform(b: number): number {
  return ((b >>> 8) + 0.5) / 16777216;
}

const STREAM = { noise: 1, jitter: 2, gshard: 3, hash: 4 };

// ---- helpers ----------------------------------------------------------------

function softmax(x: ArrayLike<number>): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) m = Math.max(m, x[i]);
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = Math.exp(x[i] - m);
  // Summed in sorted order: rows that are permutations of each other get
  // identical scores, so ties across tokens (expert choice) are exact here too.
  const s = Float64Array.from(out)
    .sort()
    .reduce((a, b) => a + b, 0);
  for (let i = 0; i < x.length; i++) out[i] /= s;
  return out;
}

function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

function logsumexp(x: ArrayLike<number>): number {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) m = Math.max(m, x[i]);
  let s = 0;
  for (let i = 0; i < x.length; i++) s += Math.exp(x[i] - m);
  return m + Math.log(s);
}

/** Indices ordered by value descending, then index ascending. */
function orderDesc(values: ArrayLike<number>, indices: number[]): number[] {
  return [...indices].sort((a, b) => (values[b] !== values[a] ? values[b] - values[a] : a - b));
}

export function refCapacity(mode: string, T: number, E: number, k: number, f: number): number {
  if (!(f > 0)) return 0;
  const c = mode === 'expert-choice' ? Math.ceil((T * f) / E) : Math.ceil((k * T * f) / E);
  return Math.min(T, Math.max(1, c));
}

/** l' for token t: l·U(1−ε, 1+ε) + N(0,1)·softplus(noise). */
export function routingLogitsRow(logits: ArrayLike<number>, t: number, E: number, o: RouteOptions): Float64Array {
  const row = new Float64Array(E);
  for (let e = 0; e < E; e++) row[e] = logits[t * E + e];
  const seed = o.seed ?? 0;
  if (o.jitter) {
    const key = streamKey(seed, STREAM.jitter);
    for (let e = 0; e < E; e++) {
      const u = uniform(bits(key, t, e));
      row[e] *= 1 - o.jitter + 2 * o.jitter * u;
    }
  }
  if (o.noiseLogits) {
    const n = o.noiseLogits instanceof Float32Array ? o.noiseLogits : o.noiseLogits.data;
    const key = streamKey(seed, STREAM.noise);
    for (let e = 0; e < E; e++) {
      const u1 = uniform(bits(key, t, 2 * e));
      const u2 = uniform(bits(key, t, 2 * e + 1));
      const z = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
      const x = n[t * E + e];
      const softplus = Math.log1p(Math.exp(-Math.abs(x))) + Math.max(x, 0);
      row[e] += z * softplus;
    }
  }
  return row;
}

function scoresOf(lp: Float64Array, score: string): Float64Array {
  if (score === 'softmax') return softmax(lp);
  if (score === 'sigmoid') return lp.map(sigmoid);
  return Float64Array.from(lp);
}

/** Router probabilities used by the balance losses. */
function probsOf(lp: Float64Array, score: string): Float64Array {
  if (score === 'sigmoid') {
    const s = lp.map(sigmoid);
    let z = 0;
    for (const v of s) z += v;
    return s.map((v) => v / z);
  }
  return softmax(lp);
}

function biasOf(o: RouteOptions): Float32Array | null {
  if (!o.selectionBias) return null;
  return o.selectionBias instanceof Float32Array ? o.selectionBias : o.selectionBias.data;
}

/**
 * Final weights of the experts `ids` (−1 = none) of one token, and the raw
 * scores (before renormalisation and scaling).
 */
export function tokenWeights(lp: Float64Array, ids: number[], o: RouteOptions): { raw: number[]; final: number[] } {
  const mode = o.mode ?? 'top-k';
  const score = o.score ?? 'softmax';
  const before = (o.scoreBeforeTopK ?? true) || mode !== 'top-k';
  const valid = ids.filter((e) => e >= 0);
  let raw: number[];
  if (before) {
    if (score === 'softmax') {
      const s = softmax(lp);
      raw = ids.map((e) => (e >= 0 ? s[e] : 0));
    } else if (score === 'sigmoid') {
      raw = ids.map((e) => (e >= 0 ? sigmoid(lp[e]) : 0));
    } else {
      raw = ids.map((e) => (e >= 0 ? (mode === 'hash' ? 1 : lp[e]) : 0));
    }
  } else if (score === 'softmax') {
    const kept = softmax(valid.map((e) => lp[e]));
    raw = ids.map((e) => (e >= 0 ? kept[valid.indexOf(e)] : 0));
  } else if (score === 'sigmoid') {
    raw = ids.map((e) => (e >= 0 ? sigmoid(lp[e]) : 0));
  } else {
    raw = ids.map((e) => (e >= 0 ? lp[e] : 0));
  }
  let final = [...raw];
  if (o.renormalize) {
    const s = final.reduce((a, b) => a + b, 0);
    if (s > 0) final = final.map((v) => v / s);
  }
  const sf = o.scalingFactor ?? 1;
  final = final.map((v) => v * sf);
  return { raw, final };
}

function hashExpert(tokenId: number, E: number, seed: number): number {
  const h = bits(streamKey(seed, STREAM.hash), tokenId >>> 0, 0);
  return Number((BigInt(h) * BigInt(E)) >> 32n);
}

/** The top-k (or hash) choice of one token, best first. */
function chooseExperts(lp: Float64Array, t: number, E: number, o: RouteOptions): number[] {
  const mode = o.mode ?? 'top-k';
  const k = o.k ?? 1;
  if (mode === 'hash') {
    const e0 = hashExpert(o.tokenIds![t], E, o.seed ?? 0);
    return Array.from({ length: k }, (_, j) => (e0 + j) % E);
  }
  const score = o.score ?? 'softmax';
  const before = o.scoreBeforeTopK ?? true;
  const base = before ? scoresOf(lp, score) : lp;
  const bias = biasOf(o);
  const sel = new Float64Array(E);
  for (let e = 0; e < E; e++) sel[e] = base[e] + (bias ? bias[e] : 0);
  let candidates = Array.from({ length: E }, (_, e) => e);
  if (o.groups && o.groups > 1) {
    const G = o.groups;
    const gs = E / G;
    const gScore = new Float64Array(G);
    for (let g = 0; g < G; g++) {
      const vals = Array.from({ length: gs }, (_, i) => sel[g * gs + i]).sort((a, b) => b - a);
      gScore[g] = o.groupScore === 'sum-top2' ? vals[0] + vals[1] : vals[0];
    }
    const chosenGroups = orderDesc(gScore, Array.from({ length: G }, (_, g) => g)).slice(0, o.topkGroups!);
    candidates = candidates.filter((e) => chosenGroups.includes(Math.floor(e / gs)));
  }
  return orderDesc(sel, candidates).slice(0, k);
}

export function routeRef(logits: ArrayLike<number>, T: number, E: number, o: RouteOptions): RefPlan {
  const mode = o.mode ?? 'top-k';
  const lps = Array.from({ length: T }, (_, t) => routingLogitsRow(logits, t, E, o));
  if (mode === 'expert-choice') return expertChoiceRef(logits, lps, T, E, o);

  const k = o.k ?? 1;
  const C = refCapacity(mode, T, E, k, o.capacityFactor ?? 0);
  const expertIds = new Int32Array(T * k);
  const weights = new Float64Array(T * k);
  const rawScore = new Float64Array(T * k);
  const randomDrop = new Set<number>();
  const gshardKey = streamKey(o.seed ?? 0, STREAM.gshard);
  for (let t = 0; t < T; t++) {
    const ids = chooseExperts(lps[t], t, E, o);
    const w = tokenWeights(lps[t], ids, o);
    for (let j = 0; j < k; j++) {
      expertIds[t * k + j] = ids[j];
      weights[t * k + j] = w.final[j];
      rawScore[t * k + j] = w.raw[j];
    }
    if (o.randomSecondExpert) {
      const g1 = w.raw[0];
      const g2 = w.raw[1];
      const u = uniform(bits(gshardKey, t, 0));
      const keep = g1 + g2 !== 0 && (2 * g2) / (g1 + g2) > u;
      if (!keep) randomDrop.add(t * k + 1);
    }
  }

  // Per expert, its dispatched slots in slot order; then capacity.
  const perExpert: number[][] = Array.from({ length: E }, () => []);
  for (let s = 0; s < T * k; s++) if (!randomDrop.has(s)) perExpert[expertIds[s]].push(s);
  const dropped = new Set<number>(randomDrop);
  const kept: number[][] = perExpert.map((slots) => {
    if (C === 0 || slots.length <= C) return slots;
    let priority: number[];
    if ((o.dropPolicy ?? 'position') === 'position') {
      priority = [...slots].sort((a, b) => (a % k !== b % k ? (a % k) - (b % k) : a - b));
    } else {
      priority = [...slots].sort((a, b) => (rawScore[b] !== rawScore[a] ? rawScore[b] - rawScore[a] : a - b));
    }
    const keep = new Set(priority.slice(0, C));
    for (const s of slots) if (!keep.has(s)) dropped.add(s);
    return slots.filter((s) => keep.has(s));
  });
  const tokensPerExpert = Int32Array.from(kept.map((l) => l.length));
  const expertOffsets = new Int32Array(E + 1);
  for (let e = 0; e < E; e++) expertOffsets[e + 1] = expertOffsets[e] + tokensPerExpert[e];
  const plan: RefPlan = {
    k,
    capacity: C,
    expertIds,
    weights,
    tokensPerExpert,
    expertOffsets,
    sortedSlots: Int32Array.from(kept.flat()),
    dropped: Int32Array.from([...dropped].sort((a, b) => a - b)),
    aux: {},
  };
  plan.aux = lossesRef(logits, T, E, o, plan);
  return plan;
}

function expertChoiceRef(logits: ArrayLike<number>, lps: Float64Array[], T: number, E: number, o: RouteOptions): RefPlan {
  const C = refCapacity('expert-choice', T, E, 1, o.capacityFactor ?? 0);
  const score = o.score ?? 'softmax';
  const S = lps.map((lp) => scoresOf(lp, score));
  const chosen: number[][] = [];
  for (let e = 0; e < E; e++) {
    const col = Float64Array.from(S, (row) => row[e]);
    chosen.push(orderDesc(col, Array.from({ length: T }, (_, t) => t)).slice(0, C).sort((a, b) => a - b));
  }
  const rows: number[][] = Array.from({ length: T }, () => []);
  for (let e = 0; e < E; e++) for (const t of chosen[e]) rows[t].push(e);
  const kp = Math.max(1, ...rows.map((r) => r.length));
  const expertIds = new Int32Array(T * kp).fill(-1);
  const weights = new Float64Array(T * kp);
  for (let t = 0; t < T; t++) {
    const ids = [...rows[t], ...Array(kp - rows[t].length).fill(-1)];
    const w = tokenWeights(lps[t], ids, o);
    for (let j = 0; j < kp; j++) {
      expertIds[t * kp + j] = ids[j];
      weights[t * kp + j] = w.final[j];
    }
  }
  const sortedSlots: number[] = [];
  for (let e = 0; e < E; e++) for (const t of chosen[e]) sortedSlots.push(t * kp + rows[t].indexOf(e));
  const plan: RefPlan = {
    k: kp,
    capacity: C,
    expertIds,
    weights,
    tokensPerExpert: new Int32Array(E).fill(C),
    expertOffsets: Int32Array.from({ length: E + 1 }, (_, e) => e * C),
    sortedSlots: Int32Array.from(sortedSlots),
    dropped: new Int32Array(0),
    aux: {},
  };
  plan.aux = lossesRef(logits, T, E, o, plan);
  return plan;
}

/**
 * The balance losses for a fixed selection (plan.expertIds), as functions of
 * the logits: recomputing them at perturbed logits gives finite differences.
 */
export function lossesRef(
  logits: ArrayLike<number>,
  T: number,
  E: number,
  o: RouteOptions,
  plan: { expertIds: Int32Array; k: number },
): Record<string, number> {
  const aux = o.aux;
  const out: Record<string, number> = {};
  if (!aux) return out;
  const score = o.score ?? 'softmax';
  const k = plan.k;
  const lps = Array.from({ length: T }, (_, t) => routingLogitsRow(logits, t, E, o));
  const probs = lps.map((lp) => probsOf(lp, score));
  const count = (t0: number, t1: number) => {
    const c = new Float64Array(E);
    for (let t = t0; t < t1; t++) for (let j = 0; j < k; j++) if (plan.expertIds[t * k + j] >= 0) c[plan.expertIds[t * k + j]]++;
    return c;
  };
  const meanProbs = (t0: number, t1: number) => {
    const P = new Float64Array(E);
    for (let t = t0; t < t1; t++) for (let e = 0; e < E; e++) P[e] += probs[t][e] / (t1 - t0);
    return P;
  };
  if (aux.loadBalance !== undefined) {
    const c = count(0, T);
    const P = meanProbs(0, T);
    let v = 0;
    for (let e = 0; e < E; e++) v += (c[e] / T) * P[e];
    out.loadBalance = aux.loadBalance * E * v;
  }
  if (aux.sequenceBalance !== undefined) {
    const L = aux.sequenceLength ?? T;
    let total = 0;
    for (let q = 0; q < T / L; q++) {
      const c = count(q * L, (q + 1) * L);
      const S = c.reduce((a, b) => a + b, 0);
      const P = meanProbs(q * L, (q + 1) * L);
      let v = 0;
      for (let e = 0; e < E; e++) v += (S > 0 ? (E * c[e]) / S : 0) * P[e];
      total += v;
    }
    out.sequenceBalance = (aux.sequenceBalance * total) / (T / L);
  }
  if (aux.zLoss !== undefined) {
    let z = 0;
    for (let t = 0; t < T; t++) z += logsumexp(lps[t]) ** 2;
    out.zLoss = (aux.zLoss * z) / T;
  }
  if (aux.importance !== undefined) {
    const imp = new Float64Array(E);
    for (let t = 0; t < T; t++) {
      const ids = Array.from(plan.expertIds.subarray(t * k, (t + 1) * k));
      const w = tokenWeights(lps[t], ids, o).final;
      ids.forEach((e, j) => {
        if (e >= 0) imp[e] += w[j];
      });
    }
    const mean = imp.reduce((a, b) => a + b, 0) / E;
    let v = 0;
    for (const x of imp) v += (x - mean) ** 2;
    v /= E;
    out.importance = (aux.importance * v) / (mean * mean + 1e-10);
  }
  return out;
}

/** Σ gw·weights for fixed expert ids, as a function of the logits. */
export function weightedSumRef(
  logits: ArrayLike<number>,
  T: number,
  E: number,
  o: RouteOptions,
  plan: { expertIds: Int32Array; k: number },
  gw: ArrayLike<number>,
): number {
  const k = plan.k;
  let s = 0;
  for (let t = 0; t < T; t++) {
    const lp = routingLogitsRow(logits, t, E, o);
    const ids = Array.from(plan.expertIds.subarray(t * k, (t + 1) * k));
    const w = tokenWeights(lp, ids, o).final;
    for (let j = 0; j < k; j++) s += gw[t * k + j] * w[j];
  }
  return s;
}

/**
 * Central finite differences of f at x (float64), every coordinate.
 * f must be smooth at x (a fixed selection).
 */
export function finiteDifference(f: (x: Float64Array) => number, x: ArrayLike<number>, h = 1e-5): Float64Array {
  const base = Float64Array.from(x);
  const g = new Float64Array(base.length);
  for (let i = 0; i < base.length; i++) {
    const xi = base[i];
    base[i] = xi + h;
    const fp = f(base);
    base[i] = xi - h;
    const fm = f(base);
    base[i] = xi;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}
