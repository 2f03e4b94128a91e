/**
 * Diagnostics for the CUDA kernels on a GPU machine, made for scarce device
 * time: where test/cuda.test.ts stops at a kernel's first wrong result, this
 * runs every case of one op group, keeps going after a failure, and says
 * *how* an output is wrong, so that one device run is enough to find a bug:
 *
 *  - per case: relative error, NaN count, wrong fraction, the row / column
 *    residues (mod 128 / mod 256) that hold the wrong elements, and the first
 *    wrong elements with where the value they hold belongs (a value found at
 *    another column or row of the reference points at a layout bug);
 *  - mapping probes for the GEMM kernels: x = I with distinct small integers
 *    at single positions of W (y = Wᵀ), and W = I with integers in x (y = x);
 *    each integer is exact in bf16, so where it lands is where the kernel
 *    reads or writes that element.
 *
 * Usage: node --import tsx scripts/cuda-diag.ts <group> where group is one of
 * linear, grouped, nm, bsr, route, experts (each in its own process, so a
 * kernel that corrupts the CUDA context cannot hide the others' results);
 * with SPARSEKIT_CUDA_WGMMA=0 the linear / grouped / experts groups run the
 * mma.sync kernels on Hopper, with SPARSEKIT_CUDA_TMA=0 the wgmma kernels fed
 * by cp.async, with SPARSEKIT_CUDA_EPILOGUE=1 the TMA kernels' specialised
 * epilogue (their f32 cases run once, in the default run). bench/gpu-check.sh
 * runs every group, those three all four ways. Exit code 1 when a case is wrong.
 */
import {
  BlockSparseMatrix,
  cuda,
  expertsForward,
  groupedGatedLinear,
  groupedLinear,
  info,
  linear,
  NMSparseMatrix,
  prepackExperts,
  prepackGatedExperts,
  route,
  sddmm,
  type ActivationName,
  type DeviceTensor,
} from '../lib/index';
import { relError } from '../test/harness';
import { roundBf16 } from '../test/reference/bf16';
import { randomPlan } from '../test/reference/experts';
import { Rng } from '../test/reference/rng';

type Dt = 'f32' | 'bf16';
const group = process.argv[2];
const backend = info().backends.cuda;
let failures = 0;
// SPARSEKIT_CUDA_WGMMA=0 (read by the plugin) runs the mma.sync kernels on Hopper; the groups
// that have wgmma kernels then skip their f32 cases, which the other run covers.
// SPARSEKIT_CUDA_TMA=0 feeds the wgmma kernels by cp.async instead of the tensor memory accelerator.
// SPARSEKIT_CUDA_EPILOGUE=1 runs the TMA kernels' epilogue compiled per output type / activation / bias.
const lean = process.env.SPARSEKIT_CUDA_EPILOGUE === '1';
const wgmma = process.env.SPARSEKIT_CUDA_WGMMA !== '0' && process.env.SPARSEKIT_CUDA_TMA !== '0' && !lean;
const wgmmaTag =
  backend.device?.sm === 90
    ? process.env.SPARSEKIT_CUDA_WGMMA === '0'
      ? ' (mma.sync, wgmma off)'
      : process.env.SPARSEKIT_CUDA_TMA === '0'
        ? ' (wgmma, cp.async)'
        : lean
          ? ' (wgmma, TMA, specialised epilogue)'
          : ' (wgmma, TMA)'
    : '';

function say(s: string) {
  process.stdout.write(s + '\n');
}

function ranges(set: Set<number>): string {
  const v = [...set].sort((a, b) => a - b);
  const out: string[] = [];
  for (let i = 0; i < v.length; ) {
    let j = i;
    while (j + 1 < v.length && v[j + 1] === v[j] + 1) j++;
    out.push(i === j ? `${v[i]}` : `${v[i]}-${v[j]}`);
    i = j + 1;
  }
  return out.length > 24 ? out.slice(0, 24).join(',') + ',…' : out.join(',');
}

/** Compares a [m, n] output with its reference; prints one line when right, a diagnosis when wrong. */
function compare(label: string, got: Float32Array, ref: ArrayLike<number>, m: number, n: number, tol: number): boolean {
  const err = relError(got, ref);
  let nan = 0;
  for (const v of got) if (!Number.isFinite(v)) nan++;
  if (err <= tol && nan === 0) {
    say(`  ok    ${label}: rel err ${err.toExponential(2)}`);
    return true;
  }
  failures++;
  let rms = 0;
  for (let i = 0; i < ref.length; i++) rms += ref[i] * ref[i];
  rms = Math.sqrt(rms / Math.max(1, ref.length));
  const thr = Math.max(tol * 4 * rms, 1e-6);
  const rowsBad = new Set<number>();
  const colsBad = new Set<number>();
  const first: number[] = [];
  let bad = 0;
  for (let i = 0; i < m * n; i++) {
    if (!(Math.abs(got[i] - ref[i]) <= thr)) {
      bad++;
      rowsBad.add(Math.floor(i / n) % 128);
      colsBad.add((i % n) % 256);
      if (first.length < 6) first.push(i);
    }
  }
  say(`  WRONG ${label}: rel err ${err.toExponential(2)}, ${nan} non-finite, ${bad}/${m * n} wrong (${((100 * bad) / (m * n)).toFixed(1)} %)`);
  say(`        wrong rows mod 128: ${ranges(rowsBad)}`);
  say(`        wrong cols mod 256: ${ranges(colsBad)}`);
  for (const i of first) {
    const r = Math.floor(i / n);
    const c = i % n;
    const v = got[i];
    const near = (a: number) => Math.abs(a - v) <= Math.max(1e-3 * Math.abs(v), thr / 4);
    const inRow: number[] = [];
    const inCol: number[] = [];
    for (let c2 = 0; c2 < n && inRow.length < 3; c2++) if (c2 !== c && near(ref[r * n + c2])) inRow.push(c2);
    for (let r2 = 0; r2 < m && inCol.length < 3; r2++) if (r2 !== r && near(ref[r2 * n + c])) inCol.push(r2);
    say(`        y[${r},${c}] = ${v.toPrecision(5)}, want ${Number(ref[i]).toPrecision(5)}; that value is the reference's at cols [${inRow}] of row ${r}, rows [${inCol}] of col ${c}`);
  }
  return false;
}

function host(t: DeviceTensor): Float32Array {
  const d = t.toHost().data as Float32Array;
  t.dispose();
  return d;
}

/** Runs one case and catches a throw (a CUDA error) as a failure. */
async function guard(label: string, fn: () => void | Promise<void>) {
  try {
    await fn();
  } catch (e) {
    failures++;
    say(`  ERROR ${label}: ${(e as Error).message}`);
  }
}

/**
 * Mapping probes of a GEMM-like op y[m, n] = f(x[m, k], W[n, k]):
 * A: x = I (m = k), W zero but for integers 1..P at chosen (c, r): y[r, c] should hold them.
 * B: W = I (n = k), x zero but for integers at chosen (r, j): y[r, j] should hold them.
 * Prints where each integer landed (or that it is missing) for the first misplaced ones.
 */
async function probes(label: string, k: number, mA: number, nA: number, gemm: (x: Float32Array, m: number, W: Float32Array, n: number) => Promise<Float32Array>) {
  const rng = new Rng(99);
  for (const side of ['W', 'x'] as const) {
    const [m, n] = side === 'W' ? [k, nA] : [mA, k];
    const x = new Float32Array(m * k);
    const W = new Float32Array(n * k);
    const want = new Map<number, [number, number]>();
    const P = 48;
    const used = new Set<string>();
    for (let v = 1; v <= P; v++) {
      let r: number, c: number;
      do {
        r = rng.int(0, m - 1);
        c = rng.int(0, n - 1);
      } while (used.has(`${r},${c}`) || used.has(`r${r}`) || used.has(`c${c}`));
      used.add(`${r},${c}`);
      used.add(`r${r}`);
      used.add(`c${c}`);
      want.set(v, [r, c]);
    }
    if (side === 'W') {
      for (let i = 0; i < k; i++) x[i * k + i] = 1;
      for (const [v, [r, c]] of want) W[c * k + r] = v; // y[r, c] = W[c, r]
    } else {
      for (let i = 0; i < k; i++) W[i * k + i] = 1;
      for (const [v, [r, c]] of want) x[r * k + c] = v; // y[r, c] = x[r, c]
    }
    await guard(`${label} probe ${side}`, async () => {
      const y = await gemm(x, m, W, n);
      const found = new Map<number, [number, number][]>();
      let stray = 0;
      for (let i = 0; i < m * n; i++) {
        const v = y[i];
        if (v === 0) continue;
        if (Number.isInteger(v) && want.has(v)) {
          const l = found.get(v) ?? [];
          l.push([Math.floor(i / n), i % n]);
          found.set(v, l);
        } else stray++;
      }
      const wrong: string[] = [];
      for (const [v, [r, c]] of want) {
        const l = found.get(v) ?? [];
        if (l.length !== 1 || l[0][0] !== r || l[0][1] !== c) wrong.push(`${v}: want (${r},${c}) got ${l.length ? l.map(([a, b]) => `(${a},${b})`).join('') : 'nowhere'}`);
      }
      if (!wrong.length && !stray) say(`  ok    ${label} probe ${side} (${m}×${k}×${n}): all ${P} integers in place`);
      else {
        failures++;
        say(`  WRONG ${label} probe ${side} (${m}×${k}×${n}): ${wrong.length}/${P} misplaced, ${stray} stray nonzeros; ${wrong.slice(0, 10).join('; ')}`);
      }
    });
  }
}

const up = (a: Float32Array, shape: number[], dtype: Dt) => cuda.toDevice({ data: a, shape }, { dtype });
const rnd = (rng: Rng, len: number, scale = 1) => rng.floats(len, scale);

async function groupLinear() {
  const rng = new Rng(5);
  const shapes: [number, number, number][] = [[1, 64, 64], [16, 1024, 640], [128, 64, 256], [256, 512, 384], [300, 1024, 520], [97, 513, 129], [13, 257, 47], [512, 256, 1024]];
  {
    for (const dtype of ['bf16', 'f32'] as Dt[]) {
      if (dtype === 'f32' && !wgmma) continue;
      const tag = `linear ${dtype}${dtype === 'bf16' ? wgmmaTag : ''}`;
      say(`${tag}`);
      for (const [m, k, n] of shapes) {
        await guard(`${tag} ${m}×${k}×${n}`, () => {
          const x = rnd(rng, m * k);
          const W = rnd(rng, n * k, 1 / Math.sqrt(k));
          const r = dtype === 'bf16' ? roundBf16 : (a: Float32Array) => a;
          const ref = linear({ data: r(x), shape: [m, k] }, { data: r(W), shape: [n, k] }).data;
          const dx = up(x, [m, k], dtype);
          const dw = up(W, [n, k], dtype);
          const y = host(cuda.linear(dx, dw, { outDtype: 'f32' }));
          dx.dispose();
          dw.dispose();
          compare(`${tag} ${m}×${k}×${n}`, y, ref, m, n, dtype === 'bf16' ? 1e-4 : 1e-5);
        });
      }
      await probes(tag, 256, 384, 512, async (x, m, W, n) => {
        const dx = up(x, [m, 256], dtype);
        const dw = up(W, [n, 256], dtype);
        const y = host(cuda.linear(dx, dw, { outDtype: 'f32' }));
        dx.dispose();
        dw.dispose();
        return y;
      });
    }
  }
}

async function groupGrouped() {
  const rng = new Rng(6);
  {
    for (const gated of [false, true]) {
      for (const dtype of ['bf16', 'f32'] as Dt[]) {
        if (dtype === 'f32' && !wgmma) continue;
        const tag = `${gated ? 'groupedGatedLinear' : 'groupedLinear'} ${dtype}${dtype === 'bf16' ? wgmmaTag : ''}`;
        say(tag);
        const round = dtype === 'bf16' ? roundBf16 : (a: Float32Array) => a;
        for (const [T, E, kk, k, n] of [[300, 8, 2, 256, 384], [200, 16, 4, 128, 192], [64, 64, 8, 64, 128], [37, 8, 2, 40, 33], [512, 4, 1, 512, 512]] as const) {
          await guard(`${tag} T=${T} E=${E}`, () => {
            const plan = randomPlan(rng, T, E, kk, { hot: [1] });
            const rows = plan.sortedSlots.length;
            const xs = rnd(rng, rows * k);
            const W = rnd(rng, E * n * k, 1 / Math.sqrt(k));
            const W3 = rnd(rng, E * n * k, 1 / Math.sqrt(k));
            const act: ActivationName = gated ? 'silu' : 'relu';
            const ref = gated
              ? groupedGatedLinear({ data: round(xs), shape: [rows, k] }, plan.expertOffsets, prepackGatedExperts({ data: round(W), shape: [E, n, k] }, { data: round(W3), shape: [E, n, k] }), { activation: act }).data
              : groupedLinear({ data: round(xs), shape: [rows, k] }, plan.expertOffsets, prepackExperts({ data: round(W), shape: [E, n, k] }), { activation: act }).data;
            const dxs = up(xs, [rows, k], dtype);
            const dw = up(W, [E, n, k], dtype);
            const dw3 = up(W3, [E, n, k], dtype);
            const dp = cuda.toDevicePlan(plan);
            const y = host(gated ? cuda.groupedGatedLinear(dxs, dp, dw, dw3, { activation: act, outDtype: 'f32' }) : cuda.groupedLinear(dxs, dp, dw, { activation: act, outDtype: 'f32' }));
            for (const t of [dxs, dw, dw3, dp]) t.dispose();
            const sizes = Array.from({ length: E }, (_, e) => plan.expertOffsets[e + 1] - plan.expertOffsets[e]);
            compare(`${tag} T=${T} E=${E} k=${kk} in=${k} out=${n} groups [${sizes.slice(0, 8)}${E > 8 ? ',…' : ''}]`, y, ref, rows, n, dtype === 'bf16' ? 1e-4 : 1e-5);
          });
        }
        // Probes through one expert holding every row (gated: up = ones against x = I, relu gate, so y = gate product).
        await probes(tag, 256, 384, 512, async (x, m, W, n) => {
          const plan = { sortedSlots: Int32Array.from({ length: m }, (_, i) => i), expertOffsets: Int32Array.from([0, m]), weights: new Float32Array(m).fill(1), k: 1 };
          const dx = up(x, [m, 256], dtype);
          const dw = up(W, [1, n, 256], dtype);
          const dp = cuda.toDevicePlan(plan);
          let y: Float32Array;
          if (gated) {
            // gate = up = W with no activation: y = (x·Wᵀ)², so the square root puts each integer back.
            const dup = up(W, [1, n, 256], dtype);
            y = host(cuda.groupedGatedLinear(dx, dp, dw, dup, { activation: 'none', outDtype: 'f32' }));
            dup.dispose();
            for (let i = 0; i < y.length; i++) y[i] = Math.sign(y[i]) * Math.sqrt(Math.abs(y[i]));
          } else y = host(cuda.groupedLinear(dx, dp, dw, { outDtype: 'f32' }));
          for (const t of [dx, dw, dp]) t.dispose();
          return y;
        });
      }
    }
  }
}

async function groupNM() {
  const rng = new Rng(7);
  for (const [n, m] of [[2, 4], [1, 4], [2, 8]]) {
    for (const dtype of ['bf16', 'f32'] as Dt[]) {
      const tag = `nmLinear ${n}:${m} ${dtype}${n === 2 && m === 4 && dtype === 'bf16' ? ' (sparse tensor cores where out%32=0, in%64=0)' : ''}`;
      say(tag);
      for (const [T, k, rows] of [[1, 256, 64], [16, 4096, 512], [128, 512, 256], [300, 1024, 384], [77, 320, 96], [5, 64, 32]]) {
        await guard(`${tag} ${T}×${k}×${rows}`, () => {
          const W = NMSparseMatrix.random(rows, k, { n, m }, { seed: rng.int(1, 1e6), scale: 1 / Math.sqrt(k) });
          const x = rnd(rng, T * k);
          const round = dtype === 'bf16' ? roundBf16 : (a: Float32Array) => a;
          const Wd = W.toDense().data;
          const ref = linear({ data: round(x), shape: [T, k] }, { data: round(Wd), shape: [rows, k] }).data;
          const dx = up(x, [T, k], dtype);
          const dw = cuda.toDeviceNM(W, { dtype });
          const y = host(cuda.nmLinear(dx, dw, { outDtype: 'f32' }));
          dx.dispose();
          dw.dispose();
          compare(`${tag} ${T}×${k}×${rows}`, y, ref, T, rows, dtype === 'bf16' ? 1e-4 : 1e-5);
        });
      }
      if (n === 2 && m === 4 && dtype === 'bf16') {
        await probes(tag, 256, 384, 512, async (x, mm, W, nn) => {
          const dx = up(x, [mm, 256], dtype);
          const dw = cuda.toDeviceNM({ data: W, shape: [nn, 256] }, { n: 2, m: 4, dtype });
          const y = host(cuda.nmLinear(dx, dw, { outDtype: 'f32' }));
          dx.dispose();
          dw.dispose();
          return y;
        });
      }
    }
  }
}

async function groupBsr() {
  const rng = new Rng(8);
  for (const b of [16, 32, 64, 8]) {
    for (const dtype of ['bf16', 'f32'] as Dt[]) {
      const tag = `bsrLinear block ${b} ${dtype}`;
      say(tag);
      for (const [T, k, rows, density] of [[1, 512, 256, 0.5], [128, 512, 512, 0.25], [300, 1024, 384, 0.1], [77, 256, 256, 1], [512, 256, 512, 0.5]]) {
        await guard(`${tag} ${T}×${k}×${rows} d=${density}`, () => {
          const W = BlockSparseMatrix.random({ shape: [rows, k], blockSize: [b, b], density, seed: rng.int(1, 1e6), scale: 1 / Math.sqrt(k * density) });
          const x = rnd(rng, T * k);
          const round = dtype === 'bf16' ? roundBf16 : (a: Float32Array) => a;
          const ref = linear({ data: round(x), shape: [T, k] }, { data: round(W.toDense().data), shape: [rows, k] }).data;
          const dx = up(x, [T, k], dtype);
          const dw = cuda.toDeviceBsr(W, { dtype });
          const y = host(cuda.bsrLinear(dx, dw, { outDtype: 'f32' }));
          dx.dispose();
          dw.dispose();
          compare(`${tag} ${T}×${k}×${rows} d=${density}`, y, ref, T, rows, dtype === 'bf16' ? 1e-4 : 1e-5);
        });
      }
      await guard(`sddmm block ${b} ${dtype}`, () => {
        const [M, N, K] = [256, 384, 128];
        const mask = BlockSparseMatrix.random({ shape: [M, N], blockSize: [b, b], density: 0.3, seed: 3 });
        const a = rnd(rng, M * K);
        const bb = rnd(rng, N * K);
        const round = dtype === 'bf16' ? roundBf16 : (v: Float32Array) => v;
        const ref = sddmm({ data: round(a), shape: [M, K] }, { data: round(bb), shape: [N, K] }, mask).toDense().data;
        const da = up(a, [M, K], dtype);
        const db = up(bb, [N, K], dtype);
        const dm = cuda.toDeviceBsr(mask, { dtype });
        const out = cuda.sddmm(da, db, dm, { outDtype: 'f32' });
        const vals = out.valuesToHost().data;
        const got = BlockSparseMatrix.fromParts({ shape: [M, N], blockSize: [b, b], rowPtr: mask.rowPtr, colIdx: mask.colIdx, values: vals as Float32Array }).toDense().data;
        for (const t of [da, db, dm, out]) t.dispose();
        compare(`sddmm block ${b} ${dtype} ${M}×${N} k=${K}`, got, ref, M, N, dtype === 'bf16' ? 1e-4 : 1e-5);
      });
    }
  }
}

async function groupRoute() {
  const rng = new Rng(9);
  say('route');
  for (const [T, E, opts] of [
    [1000, 8, { k: 2, renormalize: true }],
    [777, 64, { k: 6, score: 'softmax', renormalize: false }],
    [4096, 256, { k: 8, score: 'sigmoid', groups: 8, topkGroups: 4, groupScore: 'sum-top2', renormalize: true, scalingFactor: 2.5, bias: true }],
    [500, 160, { k: 6, score: 'softmax', groups: 8, topkGroups: 3, groupScore: 'max' }],
    [300, 128, { k: 1, score: 'sigmoid', scoreBeforeTopK: false }],
  ] as [number, number, Record<string, unknown>][]) {
    const label = `route T=${T} E=${E} ${JSON.stringify(opts)}`;
    await guard(label, () => {
      const logits = rnd(rng, T * E, 3);
      const o: Record<string, unknown> = { ...opts };
      if (o.bias) o.selectionBias = rnd(rng, E, 0.1);
      delete o.bias;
      const ref = route({ data: logits, shape: [T, E] }, o);
      const dl = cuda.toDevice({ data: logits, shape: [T, E] });
      const dp = cuda.route(dl, o);
      const got = dp.toHost();
      dl.dispose();
      dp.dispose();
      const k = Number(o.k);
      let idsBad = 0;
      let wErr = 0;
      const firstBad: string[] = [];
      const refIds = ref.expertIds;
      const refW = ref.weights;
      for (let s = 0; s < T * k; s++) {
        if (got.expertIds[s] !== refIds[s]) {
          idsBad++;
          if (firstBad.length < 4) firstBad.push(`slot ${s} (token ${Math.floor(s / k)}): ids [${Array.from(got.expertIds.subarray(s - (s % k), s - (s % k) + k))}] want [${Array.from(refIds.subarray(s - (s % k), s - (s % k) + k))}]`);
        } else wErr = Math.max(wErr, Math.abs(got.weights[s] - refW[s]));
      }
      const offBad = Array.from(got.expertOffsets).some((v, i) => v !== ref.expertOffsets[i]);
      const slotsBad = Array.from(got.sortedSlots).some((v, i) => v !== ref.sortedSlots[i]);
      if (!idsBad && wErr <= 2e-6 && !offBad && !slotsBad) say(`  ok    ${label}: ids exact, max weight err ${wErr.toExponential(2)}`);
      else {
        failures++;
        say(`  WRONG ${label}: ${idsBad} ids differ, max weight err ${wErr.toExponential(2)}, offsets ${offBad ? 'differ' : 'equal'}, sorted slots ${slotsBad ? 'differ' : 'equal'}; ${firstBad.join('; ')}`);
      }
    });
  }
}

async function groupExperts() {
  const rng = new Rng(10);
  for (const dtype of ['bf16', 'f32'] as Dt[]) {
    if (dtype === 'f32' && !wgmma) continue;
    say(`expertsForward ${dtype}${dtype === 'bf16' ? wgmmaTag : ''}`);
    for (const [T, E, k, d, ffn] of [[64, 8, 2, 256, 512], [300, 16, 4, 128, 192], [13, 4, 2, 16, 24]]) {
      const label = `expertsForward ${dtype}${dtype === 'bf16' ? wgmmaTag : ''} T=${T} E=${E} k=${k} d=${d} ffn=${ffn}`;
      await guard(label, () => {
        const plan = randomPlan(rng, T, E, k, { pDrop: 0.1 });
        const x = rnd(rng, T * d);
        const gate = rnd(rng, E * ffn * d, 1 / Math.sqrt(d));
        const upW = rnd(rng, E * ffn * d, 1 / Math.sqrt(d));
        const down = rnd(rng, E * d * ffn, 1 / Math.sqrt(ffn));
        const round = dtype === 'bf16' ? roundBf16 : (a: Float32Array) => a;
        const cpuPlan = { sortedSlots: plan.sortedSlots, expertOffsets: plan.expertOffsets, weights: plan.weights, k };
        const ref = expertsForward({ data: round(x), shape: [T, d] }, cpuPlan,
          prepackGatedExperts({ data: round(gate), shape: [E, ffn, d] }, { data: round(upW), shape: [E, ffn, d] }),
          prepackExperts({ data: round(down), shape: [E, d, ffn] })).data;
        const dx = up(x, [T, d], dtype);
        const dg = up(gate, [E, ffn, d], dtype);
        const du = up(upW, [E, ffn, d], dtype);
        const dd = up(down, [E, d, ffn], dtype);
        const dp = cuda.toDevicePlan(cpuPlan);
        const y = host(cuda.expertsForward(dx, dp, { gate: dg, up: du, down: dd }, { outDtype: 'f32' }));
        for (const t of [dx, dg, du, dd, dp]) t.dispose();
        compare(label, y, ref, T, d, dtype === 'bf16' ? 1e-2 : 1e-5);
      });
    }
  }
}

const groups: Record<string, () => Promise<void>> = { linear: groupLinear, grouped: groupGrouped, nm: groupNM, bsr: groupBsr, route: groupRoute, experts: groupExperts };

async function main() {
  if (!groups[group]) {
    say(`usage: cuda-diag.ts <${Object.keys(groups).join('|')}>`);
    process.exit(2);
  }
  if (!backend.available) {
    say(`cuda-diag ${group}: skipped: ${backend.reason}`);
    return;
  }
  say(`cuda-diag ${group} on ${backend.device?.name} (sm_${backend.device?.sm})`);
  await groups[group]();
  await cuda.synchronize();
  say(`cuda-diag ${group}: ${failures ? `${failures} WRONG` : 'all ok'}`);
  process.exitCode = failures ? 1 : 0;
}
void main();
