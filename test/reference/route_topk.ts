/**
 * Float64 reference of dropless top-k routing for the options the GPU route
 * kernel supports (score function, scores before/after the top-k, selection
 * bias, group-limited selection, renormalisation, scaling), written from the
 * semantics of route() (lib/routing.ts, issue 5), sharing nothing with the
 * kernels. Ties: higher value first, then the lower index (of expert or group).
 */
export interface TopkOptions {
  k: number;
  score?: 'softmax' | 'sigmoid' | 'none';
  scoreBeforeTopK?: boolean;
  renormalize?: boolean;
  scalingFactor?: number;
  selectionBias?: Float32Array | null;
  groups?: number;
  topkGroups?: number;
  groupScore?: 'max' | 'sum-top2';
}

export interface TopkResult {
  /** [T, k] chosen experts, best first. */
  expertIds: Int32Array;
  /** [T, k] routing weights (float64 values). */
  weights: Float64Array;
  /** [T, E] the value each expert was selected on. */
  selection: Float64Array;
}

function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

/** Orders (value, index) pairs: higher value first, then lower index; NaN last. */
function better(va: number, ia: number, vb: number, ib: number): boolean {
  const na = Number.isNaN(va), nb = Number.isNaN(vb);
  if (na !== nb) return nb;
  if (!na && va !== vb) return va > vb;
  return ia < ib;
}

export function routeTopkRef(logits: Float32Array, T: number, E: number, o: TopkOptions): TopkResult {
  const k = o.k;
  const score = o.score ?? 'softmax';
  const before = o.scoreBeforeTopK ?? true;
  const G = o.groups && o.groups > 1 ? o.groups : 1;
  const bias = o.selectionBias ?? null;
  const scored = score !== 'none';
  const onScores = before && scored && (bias !== null || (G > 1 && o.groupScore === 'sum-top2'));
  const expertIds = new Int32Array(T * k);
  const weights = new Float64Array(T * k);
  const selection = new Float64Array(T * E);
  for (let t = 0; t < T; t++) {
    const l = Array.from(logits.subarray(t * E, (t + 1) * E));
    const mx = Math.max(...l);
    const ex = l.map((v) => Math.exp(v - mx));
    const sum = ex.reduce((a, b) => a + b, 0);
    const sc = (e: number) => (score === 'softmax' ? ex[e] / sum : score === 'sigmoid' ? sigmoid(l[e]) : l[e]);
    const sel = l.map((v, e) => (onScores ? sc(e) : v) + (bias ? bias[e] : 0));
    for (let e = 0; e < E; e++) selection[t * E + e] = sel[e];
    let allowed = new Array<boolean>(E).fill(true);
    if (G > 1) {
      const gs = E / G;
      const gval: { v: number; i: number }[] = [];
      for (let g = 0; g < G; g++) {
        const members = sel.slice(g * gs, (g + 1) * gs).map((v, i) => ({ v, i: g * gs + i }));
        members.sort((a, b) => (better(a.v, a.i, b.v, b.i) ? -1 : 1));
        if (o.groupScore === 'sum-top2') gval.push({ v: members[0].v + (gs > 1 ? members[1].v : -Infinity), i: g });
        // max: the group's best member decides, ties to the lower member index (= lower group)
        else gval.push({ v: members[0].v, i: members[0].i });
      }
      const order = gval.map((g, idx) => ({ ...g, g: idx })).sort((a, b) => (better(a.v, a.i, b.v, b.i) ? -1 : 1));
      allowed = new Array<boolean>(E).fill(false);
      for (let r = 0; r < (o.topkGroups ?? G); r++) for (let i = 0; i < gs; i++) allowed[order[r].g * gs + i] = true;
    }
    const cand = [...Array(E).keys()].filter((e) => allowed[e]).sort((a, b) => (better(sel[a], a, sel[b], b) ? -1 : 1));
    const ids = cand.slice(0, k);
    let w: number[];
    if (before) {
      w = ids.map((e) => sc(e));
    } else if (score === 'softmax') {
      const m2 = Math.max(...ids.map((e) => l[e]));
      const e2 = ids.map((e) => Math.exp(l[e] - m2));
      const s2 = e2.reduce((a, b) => a + b, 0);
      w = e2.map((v) => v / s2);
    } else {
      w = ids.map((e) => (score === 'sigmoid' ? sigmoid(l[e]) : l[e]));
    }
    if (o.renormalize) {
      const s3 = w.reduce((a, b) => a + b, 0);
      if (s3 > 0) w = w.map((v) => v / s3);
    }
    const scale = o.scalingFactor ?? 1;
    for (let j = 0; j < k; j++) {
      expertIds[t * k + j] = ids[j];
      weights[t * k + j] = w[j] * scale;
    }
  }
  return { expertIds, weights, selection };
}

/** The plan arrays implied by a set of expert ids: stable sort of slots by expert. */
export function planFromIds(ids: Int32Array, E: number): { tokensPerExpert: Int32Array; expertOffsets: Int32Array; sortedSlots: Int32Array } {
  const tokensPerExpert = new Int32Array(E);
  for (const e of ids) tokensPerExpert[e]++;
  const expertOffsets = new Int32Array(E + 1);
  for (let e = 0; e < E; e++) expertOffsets[e + 1] = expertOffsets[e] + tokensPerExpert[e];
  const next = expertOffsets.slice(0, E);
  const sortedSlots = new Int32Array(ids.length);
  for (let s = 0; s < ids.length; s++) sortedSlots[next[ids[s]]++] = s;
  return { tokensPerExpert, expertOffsets, sortedSlots };
}
