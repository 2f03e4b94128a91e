/**
 * Float64 references of published MoE blocks, written from the papers and the
 * models' reference code (Hugging Face modelling files, config.json), one
 * function per model family. They share nothing with lib/: the router, the
 * selection, the capacity rule and the experts are all spelled out here.
 */
import { activate, type Act } from './dense';

export interface RefWeights {
  d: number;
  f: number;
  E: number;
  router: Float32Array; // [E, d]
  routerBias?: Float32Array; // [E]
  gate?: Float32Array; // [E, f, d]
  up?: Float32Array;
  w1?: Float32Array; // [E, f, d]
  b1?: Float32Array; // [E, f]
  down: Float32Array; // [E, d, f]
  b2?: Float32Array; // [E, d]
  shared?: { sf: number; gate: Float32Array; up: Float32Array; down: Float32Array };
  sharedGate?: Float32Array; // [d]
}

function dot(a: ArrayLike<number>, ao: number, b: ArrayLike<number>, bo: number, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += a[ao + i] * b[bo + i];
  return s;
}

function routerLogits(x: Float32Array, t: number, w: RefWeights): number[] {
  return Array.from({ length: w.E }, (_, e) => dot(x, t * w.d, w.router, e * w.d, w.d));
}

function softmax(v: number[]): number[] {
  const m = Math.max(...v);
  const ex = v.map((z) => Math.exp(z - m));
  const s = ex.reduce((a, b) => a + b, 0);
  return ex.map((z) => z / s);
}

/** Indices of the k largest values; ties to the lower index. */
function topk(v: number[], k: number, eligible?: boolean[]): number[] {
  const idx = v.map((_, i) => i).filter((i) => !eligible || eligible[i]);
  idx.sort((a, b) => (v[b] !== v[a] ? v[b] - v[a] : a - b));
  return idx.slice(0, k);
}

/** SwiGLU/GeGLU expert: W2 (act(W1 x) ⊙ W3 x). */
function gatedExpert(x: Float32Array, xo: number, w: RefWeights, e: number, act: Act): number[] {
  const h = new Array<number>(w.f);
  for (let i = 0; i < w.f; i++) {
    const g = dot(x, xo, w.gate!, (e * w.f + i) * w.d, w.d);
    const u = dot(x, xo, w.up!, (e * w.f + i) * w.d, w.d);
    h[i] = activate(g, act) * u;
  }
  return Array.from({ length: w.d }, (_, o) => dot(h, 0, w.down, (e * w.d + o) * w.f, w.f));
}

/** Plain FFN expert: W2 act(W1 x + b1) + b2. */
function plainExpert(x: Float32Array, xo: number, w: RefWeights, e: number, act: Act): number[] {
  const h = new Array<number>(w.f);
  for (let i = 0; i < w.f; i++) h[i] = activate(dot(x, xo, w.w1!, (e * w.f + i) * w.d, w.d) + (w.b1 ? w.b1[e * w.f + i] : 0), act);
  return Array.from({ length: w.d }, (_, o) => dot(h, 0, w.down, (e * w.d + o) * w.f, w.f) + (w.b2 ? w.b2[e * w.d + o] : 0));
}

/** DeepSeek/Qwen shared MLP: down (silu(gate x) ⊙ up x). */
function sharedMlp(x: Float32Array, xo: number, w: RefWeights): number[] {
  const s = w.shared!;
  const h = new Array<number>(s.sf);
  for (let i = 0; i < s.sf; i++) h[i] = activate(dot(x, xo, s.gate, i * w.d, w.d), 'silu') * dot(x, xo, s.up, i * w.d, w.d);
  return Array.from({ length: w.d }, (_, o) => dot(h, 0, s.down, o * s.sf, s.sf));
}

type Choice = { e: number; w: number }[];

function assemble(x: Float32Array, T: number, w: RefWeights, choices: Choice[], expert: (t: number, e: number) => number[], shared?: (t: number) => number[]): Float64Array {
  const y = new Float64Array(T * w.d);
  for (let t = 0; t < T; t++) {
    for (const { e, w: g } of choices[t]) {
      const o = expert(t, e);
      for (let i = 0; i < w.d; i++) y[t * w.d + i] += g * o[i];
    }
    if (shared) {
      const s = shared(t);
      for (let i = 0; i < w.d; i++) y[t * w.d + i] += s[i];
    }
  }
  return y;
}

/** Mixtral (HF MixtralSparseMoeBlock): softmax, top-k, renormalise; SwiGLU experts. */
export function mixtralRef(x: Float32Array, T: number, w: RefWeights, k = 2): Float64Array {
  const choices = Array.from({ length: T }, (_, t) => {
    const p = softmax(routerLogits(x, t, w));
    const sel = topk(p, k);
    const s = sel.reduce((a, e) => a + p[e], 0);
    return sel.map((e) => ({ e, w: p[e] / s }));
  });
  return assemble(x, T, w, choices, (t, e) => gatedExpert(x, t * w.d, w, e, 'silu'));
}

/** Qwen2-MoE: softmax top-4 without renormalisation, plus σ(w_sg·x)·shared_expert(x). Qwen3-MoE: top-8 renormalised, no shared expert. */
export function qwenRef(x: Float32Array, T: number, w: RefWeights, k: number, renorm: boolean): Float64Array {
  const choices = Array.from({ length: T }, (_, t) => {
    const p = softmax(routerLogits(x, t, w));
    const sel = topk(p, k);
    const s = renorm ? sel.reduce((a, e) => a + p[e], 0) : 1;
    return sel.map((e) => ({ e, w: p[e] / s }));
  });
  const shared = w.shared
    ? (t: number) => {
        const g = 1 / (1 + Math.exp(-dot(x, t * w.d, w.sharedGate!, 0, w.d)));
        return sharedMlp(x, t * w.d, w).map((v) => g * v);
      }
    : undefined;
  return assemble(x, T, w, choices, (t, e) => gatedExpert(x, t * w.d, w, e, 'silu'), shared);
}

/**
 * DeepSeek-V2 (group_limited_greedy): softmax scores; groups scored by their
 * max; top `topkGroups` groups; top-k experts among them; weights = scores ×
 * routed_scaling_factor (no renormalisation). DeepSeek-V3 (noaux_tc): sigmoid
 * scores; selection on scores + bias; groups scored by the sum of their top-2
 * biased scores; weights = unbiased scores renormalised × scaling factor.
 */
export function deepseekRef(
  x: Float32Array,
  T: number,
  w: RefWeights,
  o: { version: 2 | 3; k: number; groups: number; topkGroups: number; scaling: number },
): Float64Array {
  const per = w.E / o.groups;
  const choices = Array.from({ length: T }, (_, t) => {
    const l = routerLogits(x, t, w);
    const s = o.version === 2 ? softmax(l) : l.map((z) => 1 / (1 + Math.exp(-z)));
    const sel = o.version === 3 ? s.map((v, e) => v + (w.routerBias ? w.routerBias[e] : 0)) : s;
    const gscore = Array.from({ length: o.groups }, (_, g) => {
      const vals = sel.slice(g * per, (g + 1) * per).sort((a, b) => b - a);
      return o.version === 2 ? vals[0] : vals[0] + vals[1];
    });
    const keepGroups = new Set(topk(gscore, o.topkGroups));
    const eligible = sel.map((_, e) => keepGroups.has(Math.floor(e / per)));
    const chosen = topk(sel, o.k, eligible);
    const denom = o.version === 3 ? chosen.reduce((a, e) => a + s[e], 0) : 1;
    return chosen.map((e) => ({ e, w: (s[e] / denom) * o.scaling }));
  });
  return assemble(x, T, w, choices, (t, e) => gatedExpert(x, t * w.d, w, e, 'silu'), w.shared ? (t) => sharedMlp(x, t * w.d, w) : undefined);
}

/**
 * Switch (k = 1) and GShard (k = 2, weights g_i/(g1+g2)) with expert capacity
 * C = ceil(k·T·factor/E): slots fill experts in order of choice rank, then
 * token; slots past capacity are dropped (output 0 for them). ReLU FFN experts.
 * GShard's random 2nd-expert dispatch is a training-time draw, off here.
 */
export function switchGshardRef(x: Float32Array, T: number, w: RefWeights, k: 1 | 2, factor: number): Float64Array {
  const C = Math.min(T, Math.max(1, Math.ceil((k * T * factor) / w.E)));
  const picks = Array.from({ length: T }, (_, t) => {
    const p = softmax(routerLogits(x, t, w));
    const sel = topk(p, k);
    const s = k === 2 ? sel.reduce((a, e) => a + p[e], 0) : 1;
    return sel.map((e) => ({ e, w: p[e] / s }));
  });
  const load = new Array(w.E).fill(0);
  const kept: Choice[] = Array.from({ length: T }, () => []);
  for (let j = 0; j < k; j++)
    for (let t = 0; t < T; t++) {
      const { e, w: g } = picks[t][j];
      if (load[e] < C) {
        load[e]++;
        kept[t].push({ e, w: g });
      }
    }
  return assemble(x, T, w, kept, (t, e) => plainExpert(x, t * w.d, w, e, 'relu'));
}

/** Expert choice (Zhou et al. 2022): S = softmax over experts; expert e takes its top C = ceil(T·c/E) tokens (ties: lower token); y_t = Σ_{e ∋ t} S[t,e]·FFN_e(x_t). */
export function expertChoiceRef(x: Float32Array, T: number, w: RefWeights, c: number): Float64Array {
  const S = Array.from({ length: T }, (_, t) => softmax(routerLogits(x, t, w)));
  const C = Math.min(T, Math.max(1, Math.ceil((T * c) / w.E)));
  const choices: Choice[] = Array.from({ length: T }, () => []);
  for (let e = 0; e < w.E; e++) {
    const col = S.map((row) => row[e]);
    for (const t of topk(col, C)) choices[t].push({ e, w: S[t][e] });
  }
  return assemble(x, T, w, choices, (t, e) => plainExpert(x, t * w.d, w, e, 'gelu'));
}
