// nmGroupedLinear / bsrGroupedLinear: every expert's sparse product in one
// call, plain and gated (stacked gate/up, act(gate) ⊙ up), against a float64
// per-expert loop over the matrices' own toDense(). Uneven groups with empty
// experts, decode-sized groups (the per-expert paths), tile-sized groups.
// N:M: ffn not a multiple of the 4-row panel (the up half starts mid-panel),
// tuned and generic patterns. BSR: several block shapes, densities.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  BlockSparseMatrix,
  NMSparseMatrix,
  bsrGroupedLinear,
  bsrGroupedLinearAsync,
  nmGroupedLinear,
  nmGroupedLinearAsync,
  prepackBsrLinear,
  prepackNM,
  type PackedBsrLinear,
  type PackedNMLinear,
} from '../lib/index';
import { checkBadInputs, checkOp, isaMatrix, withRuntime } from './harness';
import { Rng } from './reference/rng';

type T2 = { data: Float32Array; shape: number[] };

interface In {
  xs: T2;
  offsets: Int32Array;
  experts: { rows: number; toDense(): T2 }[];
  gated: boolean;
  activation: 'none' | 'relu' | 'silu' | 'gelu';
}

function act64(a: string, v: number): number {
  switch (a) {
    case 'relu':
      return v > 0 ? v : 0;
    case 'silu':
      return v / (1 + Math.exp(-v));
    case 'gelu': {
      // erf by Abramowitz–Stegun 7.1.26 is too coarse for 1e-5; integrate instead.
      const z = v / Math.SQRT2;
      let s = 0;
      const n = 2000;
      for (let i = 0; i < n; i++) {
        const t = ((i + 0.5) / n) * z;
        s += Math.exp(-t * t);
      }
      const erf = (2 / Math.sqrt(Math.PI)) * s * (z / n);
      return 0.5 * v * (1 + erf);
    }
    default:
      return v;
  }
}

function reference(s: In): Float64Array {
  const d = s.xs.shape[1];
  const out = s.experts[0].toDense().shape[0];
  const n = s.gated ? out / 2 : out;
  const rows = s.xs.shape[0];
  const y = new Float64Array(rows * n);
  for (let e = 0; e < s.experts.length; e++) {
    const W = s.experts[e].toDense().data;
    for (let r = s.offsets[e]; r < s.offsets[e + 1]; r++) {
      const dot = (o: number) => {
        let a = 0;
        for (let c = 0; c < d; c++) a += s.xs.data[r * d + c] * W[o * d + c];
        return a;
      };
      for (let j = 0; j < n; j++) y[r * n + j] = s.gated ? act64(s.activation, dot(j)) * dot(j + n) : act64(s.activation, dot(j));
    }
  }
  return y;
}

function groupsOf(sizes: number[]): Int32Array {
  const o = new Int32Array(sizes.length + 1);
  for (let e = 0; e < sizes.length; e++) o[e + 1] = o[e] + sizes[e];
  return o;
}

interface GroupedCase {
  sizes: number[];
  d: number;
  gated: boolean;
  act: In['activation'];
}

/** One sample per case: tokens grouped by `sizes`, one expert matrix per group. */
function groupedSamples<C extends GroupedCase>(
  rng: Rng,
  cases: C[],
  expert: (c: C, caseIndex: number, e: number) => In['experts'][number],
  label: (c: C) => string,
): { label: string; inputs: In }[] {
  return cases.map((c, i) => {
    const offsets = groupsOf(c.sizes);
    const rows = offsets[c.sizes.length];
    const experts = c.sizes.map((_, e) => expert(c, i, e));
    return {
      label: `${label(c)} d=${c.d} groups=[${c.sizes}] gated=${c.gated} ${c.act}`,
      inputs: { xs: { data: rng.floats(rows * c.d), shape: [rows, c.d] }, offsets, experts, gated: c.gated, activation: c.act },
    };
  });
}

checkOp({
  name: 'nmGroupedLinear',
  samples: () => {
    const rng = new Rng(404);
    const cases: { sizes: number[]; out: number; d: number; n: number; m: number; gated: boolean; act: In['activation'] }[] = [
      { sizes: [0, 37, 5, 90], out: 48, d: 64, n: 2, m: 4, gated: true, act: 'silu' },
      { sizes: [1, 0, 2, 1], out: 44, d: 32, n: 2, m: 4, gated: true, act: 'gelu' }, // decode; ffn 22
      { sizes: [150, 130], out: 36, d: 40, n: 1, m: 4, gated: true, act: 'silu' }, // wide tiles; ffn 18
      { sizes: [3, 64, 0, 17], out: 29, d: 48, n: 1, m: 8, gated: false, act: 'relu' },
      { sizes: [20, 9, 33], out: 40, d: 24, n: 3, m: 4, gated: true, act: 'silu' }, // generic pattern
      { sizes: [0, 0, 5, 0], out: 16, d: 16, n: 2, m: 4, gated: false, act: 'none' }, // one expert takes all
      { sizes: [257], out: 97, d: 32, n: 2, m: 8, gated: false, act: 'none' },
    ];
    return groupedSamples(
      rng,
      cases,
      (c, i, e) => NMSparseMatrix.random(c.out, c.d, { n: c.n, m: c.m }, { seed: 1000 * i + e }),
      (c) => `${c.n}:${c.m} out=${c.out}`,
    );
  },
  prepare: (s: In) => (s.experts as NMSparseMatrix[]).map((W) => prepackNM(W)),
  run: (p: PackedNMLinear[], s) => nmGroupedLinear(s.xs, s.offsets, p, { gated: s.gated, activation: s.activation }),
  runAsync: (p: PackedNMLinear[], s) => nmGroupedLinearAsync(s.xs, s.offsets, p, { gated: s.gated, activation: s.activation }),
  reference,
  tolerance: 1e-5,
});

checkOp({
  name: 'bsrGroupedLinear',
  samples: () => {
    const rng = new Rng(505);
    const cases: { sizes: number[]; out: number; d: number; bs: [number, number]; density: number; gated: boolean; act: In['activation'] }[] = [
      { sizes: [0, 37, 5, 90, 200], out: 64, d: 64, bs: [8, 8], density: 0.25, gated: true, act: 'silu' },
      { sizes: [1, 0, 2, 1], out: 48, d: 32, bs: [8, 8], density: 0.5, gated: true, act: 'gelu' }, // decode: per-expert path
      { sizes: [150, 130], out: 96, d: 48, bs: [16, 16], density: 0.4, gated: true, act: 'silu' },
      { sizes: [3, 64, 0, 170], out: 40, d: 32, bs: [4, 8], density: 0.3, gated: false, act: 'relu' },
      { sizes: [260], out: 36, d: 20, bs: [1, 4], density: 0.5, gated: true, act: 'silu' },
      { sizes: [90, 0, 200], out: 64, d: 64, bs: [32, 32], density: 0.5, gated: false, act: 'none' },
    ];
    return groupedSamples(
      rng,
      cases,
      (c, i, e) => BlockSparseMatrix.random({ shape: [c.out, c.d], blockSize: c.bs, density: c.density, seed: 100 * i + e + 1 }),
      (c) => `${c.bs.join('x')}@${c.density} out=${c.out}`,
    );
  },
  prepare: (s: In) => (s.experts as BlockSparseMatrix[]).map((W) => prepackBsrLinear(W)),
  run: (p: PackedBsrLinear[], s) => bsrGroupedLinear(s.xs, s.offsets, p, { gated: s.gated, activation: s.activation }),
  runAsync: (p: PackedBsrLinear[], s) => bsrGroupedLinearAsync(s.xs, s.offsets, p, { gated: s.gated, activation: s.activation }),
  reference,
  tolerance: 1e-5,
});

// Gated with options.down: both projections of the expert block in one call,
// the gated product handed to the down kernel in its packed layout.
interface ChainIn extends In {
  downs: NMSparseMatrix[];
}

function referenceChain(s: ChainIn): Float64Array {
  const h = reference(s);
  const f = s.experts[0].toDense().shape[0] / 2;
  const dOut = s.downs[0].rows;
  const rows = s.xs.shape[0];
  const y = new Float64Array(rows * dOut);
  for (let e = 0; e < s.downs.length; e++) {
    const D = s.downs[e].toDense().data;
    for (let r = s.offsets[e]; r < s.offsets[e + 1]; r++)
      for (let o = 0; o < dOut; o++) {
        let a = 0;
        for (let c = 0; c < f; c++) a += h[r * f + c] * D[o * f + c];
        y[r * dOut + o] = a;
      }
  }
  return y;
}

const chainCases: { sizes: number[]; ffn: number; d: number; dOut: number; n: number; m: number; dn?: [number, number]; act: In['activation'] }[] = [
  { sizes: [0, 37, 5, 90], ffn: 24, d: 64, dOut: 40, n: 2, m: 4, act: 'silu' }, // tiles, uneven groups, an empty expert
  { sizes: [150, 130, 0], ffn: 18, d: 40, dOut: 24, n: 1, m: 2, act: 'gelu' }, // wide tiles; ffn not a multiple of the 4-row panel
  { sizes: [1, 0, 2, 1], ffn: 22, d: 32, dOut: 16, n: 1, m: 2, act: 'silu' }, // decode: the per-expert path
  { sizes: [20, 9, 33], ffn: 20, d: 24, dOut: 12, n: 3, m: 4, act: 'silu' }, // generic pattern
  { sizes: [2, 4, 0, 3], ffn: 24, d: 32, dOut: 8, n: 2, m: 4, act: 'silu' }, // decode, 2:4
  { sizes: [64, 70], ffn: 32, d: 32, dOut: 48, n: 2, m: 8, act: 'silu' },
  { sizes: [40, 3, 77], ffn: 16, d: 32, dOut: 32, n: 2, m: 4, dn: [1, 4], act: 'silu' }, // down of another pattern: unfused
  { sizes: [0, 0, 300, 0], ffn: 36, d: 48, dOut: 20, n: 2, m: 4, act: 'silu' }, // one expert takes all
];

function chainSamples(): { label: string; inputs: ChainIn }[] {
  const rng = new Rng(606);
  return chainCases.map((c, i) => {
    const offsets = groupsOf(c.sizes);
    const rows = offsets[c.sizes.length];
    const experts = c.sizes.map((_, e) => NMSparseMatrix.random(2 * c.ffn, c.d, { n: c.n, m: c.m }, { seed: 3000 * i + e }));
    const [dn, dm] = c.dn ?? [c.n, c.m];
    const downs = c.sizes.map((_, e) => NMSparseMatrix.random(c.dOut, c.ffn, { n: dn, m: dm }, { seed: 3000 * i + 500 + e }));
    return {
      label: `${c.n}:${c.m} (down ${dn}:${dm}) ffn=${c.ffn} d=${c.d} out=${c.dOut} groups=[${c.sizes}] ${c.act}`,
      inputs: { xs: { data: rng.floats(rows * c.d), shape: [rows, c.d] }, offsets, experts, gated: true, activation: c.act, downs },
    };
  });
}

checkOp({
  name: 'nmGroupedLinear (gated, options.down)',
  samples: chainSamples,
  prepare: (s: ChainIn) => ({
    gu: (s.experts as NMSparseMatrix[]).map((W) => prepackNM(W)),
    dn: s.downs.map((W) => prepackNM(W)),
  }),
  run: (p, s) => nmGroupedLinear(s.xs, s.offsets, p.gu, { gated: true, activation: s.activation, down: p.dn }),
  runAsync: (p, s) => nmGroupedLinearAsync(s.xs, s.offsets, p.gu, { gated: true, activation: s.activation, down: p.dn }),
  reference: referenceChain,
  tolerance: 1e-5,
});

test('nmGroupedLinear with options.down gives bit for bit the two separate grouped calls, on every ISA', async () => {
  for (const isa of isaMatrix().run) {
    await withRuntime(isa, 2, () => {
      for (const { label, inputs: s } of chainSamples()) {
        const gu = (s.experts as NMSparseMatrix[]).map((W) => prepackNM(W));
        const dn = s.downs.map((W) => prepackNM(W));
        const h = nmGroupedLinear(s.xs, s.offsets, gu, { gated: true, activation: s.activation });
        const two = nmGroupedLinear(h, s.offsets, dn);
        const out = new Float32Array(two.data.length).fill(Number.NaN);
        const one = nmGroupedLinear(s.xs, s.offsets, gu, { gated: true, activation: s.activation, down: dn, out });
        assert.equal(one.data, out, `${isa} ${label}: out is returned`);
        assert.deepEqual(one.shape, two.shape, `${isa} ${label}: shape`);
        for (let i = 0; i < out.length; i++)
          assert.ok(Object.is(out[i], two.data[i]), `${isa} ${label}: element ${i} ${out[i]} ≠ ${two.data[i]}`);
      }
    });
  }
});

test('nmGroupedLinear: gated defaults to silu; out is filled and returned', () => {
  const W = [NMSparseMatrix.random(8, 16, { n: 2, m: 4 }, { seed: 1 }), NMSparseMatrix.random(8, 16, { n: 2, m: 4 }, { seed: 2 })];
  const p = W.map((w) => prepackNM(w));
  const xs = { data: new Rng(3).floats(5 * 16), shape: [5, 16] };
  const offsets = groupsOf([2, 3]);
  const out = new Float32Array(5 * 4);
  const y = nmGroupedLinear(xs, offsets, p, { gated: true, out });
  assert.equal(y.data, out);
  assert.deepEqual(y.shape, [5, 4]);
  const ref = reference({ xs, offsets, experts: W, gated: true, activation: 'silu' });
  for (let i = 0; i < ref.length; i++) assert.ok(Math.abs(ref[i] - out[i]) < 1e-5);
});

const W4 = NMSparseMatrix.random(8, 16, { n: 2, m: 4 }, { seed: 5 });
const P4 = prepackNM(W4);
const P8 = prepackNM(NMSparseMatrix.random(8, 16, { n: 1, m: 8 }, { seed: 6 }));
const P6 = prepackNM(NMSparseMatrix.random(6, 16, { n: 2, m: 4 }, { seed: 7 }));
const P7 = prepackNM(NMSparseMatrix.random(7, 16, { n: 2, m: 4 }, { seed: 8 }));
const xs3 = { data: new Float32Array(3 * 16), shape: [3, 16] };
const D4 = prepackNM(NMSparseMatrix.random(16, 4, { n: 2, m: 4 }, { seed: 9 }));
const D4b = prepackNM(NMSparseMatrix.random(12, 4, { n: 2, m: 4 }, { seed: 10 }));
checkBadInputs('nmGroupedLinear', [
  { label: 'xs not a tensor', call: () => nmGroupedLinear(null as never, groupsOf([3]), [P4]), error: TypeError, message: /xs/ },
  { label: 'experts not an array', call: () => nmGroupedLinear(xs3, groupsOf([3]), P4 as never), error: TypeError, message: /experts/ },
  { label: 'no experts', call: () => nmGroupedLinear(xs3, new Int32Array([0]), []), error: RangeError, message: /experts/ },
  { label: 'expert not packed', call: () => nmGroupedLinear(xs3, groupsOf([3]), [W4 as never]), error: TypeError, message: /experts\[0\]/ },
  { label: 'patterns differ', call: () => nmGroupedLinear(xs3, groupsOf([1, 2]), [P4, P8]), error: RangeError, message: /experts\[1\]/ },
  { label: 'shapes differ', call: () => nmGroupedLinear(xs3, groupsOf([1, 2]), [P4, P6]), error: RangeError, message: /experts\[1\]/ },
  { label: 'width ≠ in', call: () => nmGroupedLinear({ data: new Float32Array(24), shape: [3, 8] }, groupsOf([3]), [P4]), error: RangeError, message: /xs\.shape\[1\]/ },
  { label: 'offsets wrong length', call: () => nmGroupedLinear(xs3, groupsOf([3]), [P4, P4]), error: RangeError, message: /expertOffsets/ },
  { label: 'offsets not from 0', call: () => nmGroupedLinear(xs3, new Int32Array([1, 3]), [P4]), error: RangeError, message: /expertOffsets\[0\]/ },
  { label: 'offsets decrease', call: () => nmGroupedLinear(xs3, new Int32Array([0, 3, 2, 3]), [P4, P4, P4]), error: RangeError, message: /non-decreasing/ },
  { label: 'offsets end ≠ rows', call: () => nmGroupedLinear(xs3, new Int32Array([0, 2]), [P4]), error: RangeError, message: /xs\.shape\[0\]/ },
  { label: 'offsets not Int32Array', call: () => nmGroupedLinear(xs3, [0, 3] as never, [P4]), error: TypeError, message: /expertOffsets/ },
  { label: 'gated odd out', call: () => nmGroupedLinear(xs3, groupsOf([3]), [P7], { gated: true }), error: RangeError, message: /even/ },
  { label: 'gated not boolean', call: () => nmGroupedLinear(xs3, groupsOf([3]), [P4], { gated: 1 as never }), error: TypeError, message: /gated/ },
  { label: 'bad activation', call: () => nmGroupedLinear(xs3, groupsOf([3]), [P4], { activation: 'tanh' as never }), error: RangeError, message: /activation/ },
  { label: 'out too short', call: () => nmGroupedLinear(xs3, groupsOf([3]), [P4], { gated: true, out: new Float32Array(11) }), error: RangeError, message: /out/ },
  { label: 'async: patterns differ', call: () => nmGroupedLinearAsync(xs3, groupsOf([1, 2]), [P4, P8]), error: RangeError, message: /experts\[1\]/ },
  // options.down (D4: [16, 4] 2:4, the down of the gated width 4 = P4's 8 / 2)
  { label: 'down without gated', call: () => nmGroupedLinear(xs3, groupsOf([3]), [P4], { down: [D4] }), error: TypeError, message: /options\.down.*gated/ },
  { label: 'down not an array', call: () => nmGroupedLinear(xs3, groupsOf([3]), [P4], { gated: true, down: D4 as never }), error: TypeError, message: /options\.down/ },
  { label: 'down not packed', call: () => nmGroupedLinear(xs3, groupsOf([3]), [P4], { gated: true, down: [W4 as never] }), error: TypeError, message: /options\.down\[0\]/ },
  { label: 'down count ≠ experts', call: () => nmGroupedLinear(xs3, groupsOf([1, 2]), [P4, P4], { gated: true, down: [D4] }), error: RangeError, message: /options\.down has 1/ },
  { label: 'down in ≠ gated width', call: () => nmGroupedLinear(xs3, groupsOf([3]), [P4], { gated: true, down: [P4] }), error: RangeError, message: /options\.down.*gated width 4/ },
  { label: 'down shapes differ', call: () => nmGroupedLinear(xs3, groupsOf([1, 2]), [P4, P4], { gated: true, down: [D4, D4b] }), error: RangeError, message: /options\.down\[1\]/ },
  { label: 'out sized for the gated width', call: () => nmGroupedLinear(xs3, groupsOf([3]), [P4], { gated: true, down: [D4], out: new Float32Array(12) }), error: RangeError, message: /out/ },
  { label: 'async: down count', call: () => nmGroupedLinearAsync(xs3, groupsOf([1, 2]), [P4, P4], { gated: true, down: [D4] }), error: RangeError, message: /options\.down has 1/ },
]);

const B8 = prepackBsrLinear(BlockSparseMatrix.random({ shape: [16, 16], blockSize: [8, 8], density: 0.5, seed: 3 }));
const B4 = prepackBsrLinear(BlockSparseMatrix.random({ shape: [16, 16], blockSize: [4, 4], density: 0.5, seed: 4 }));
const B12 = prepackBsrLinear(BlockSparseMatrix.random({ shape: [24, 16], blockSize: [8, 8], density: 0.5, seed: 5 }));
checkBadInputs('bsrGroupedLinear', [
  { label: 'experts not an array', call: () => bsrGroupedLinear(xs3, groupsOf([3]), B8 as never), error: TypeError, message: /experts/ },
  { label: 'N:M expert', call: () => bsrGroupedLinear(xs3, groupsOf([3]), [P4 as never]), error: TypeError, message: /experts\[0\]/ },
  { label: 'block shapes differ', call: () => bsrGroupedLinear(xs3, groupsOf([1, 2]), [B8, B4]), error: RangeError, message: /experts\[1\]/ },
  { label: 'down (N:M only)', call: () => bsrGroupedLinear(xs3, groupsOf([3]), [B8], { gated: true, down: [B8] } as never), error: TypeError, message: /options\.down/ },
  { label: 'width ≠ in', call: () => bsrGroupedLinear({ data: new Float32Array(24), shape: [3, 8] }, groupsOf([3]), [B8]), error: RangeError, message: /xs\.shape\[1\]/ },
  { label: 'offsets end ≠ rows', call: () => bsrGroupedLinear(xs3, new Int32Array([0, 2]), [B8]), error: RangeError, message: /xs\.shape\[0\]/ },
  { label: 'gate split inside a block row', call: () => bsrGroupedLinear(xs3, groupsOf([3]), [B12], { gated: true }), error: RangeError, message: /block/ },
  { label: 'async: block shapes differ', call: () => bsrGroupedLinearAsync(xs3, groupsOf([1, 2]), [B8, B4]), error: RangeError, message: /experts\[1\]/ },
]);
