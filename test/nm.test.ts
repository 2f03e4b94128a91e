import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  NMSparseMatrix,
  info,
  isNM,
  isTunedPattern,
  nmLinear,
  nmLinearAsync,
  nmLinearTransposed,
  nmLinearTransposedAsync,
  nmMask,
  prepackNM,
  setIsa,
  srsteGrad,
  type NMParts,
  type PackedNMLinear,
} from '../lib/index';
import { native } from '../lib/native';
import { checkBadInputs, checkOp, relError, type BadCase } from './harness';
import { linearRef, type Act } from './reference/dense';
import {
  bf16ToNumber,
  cutlassMetaOffsetRef,
  halfToNumber,
  indexBits,
  indexBytesPerRow,
  keptPerRow,
  pruneRef,
  readIndex,
  toDenseRef,
  transposedRef,
  writeIndex,
} from './reference/nm';
import { Rng } from './reference/rng';

type T2 = { data: Float32Array; shape: number[] };
const ACTS: Act[] = ['none', 'relu', 'gelu', 'gelu_tanh', 'silu'];
/** Tuned patterns first, then generic ones (n ∤ 8, m not a power of two, m = 16). */
const TUNED: [number, number][] = [[1, 2], [2, 4], [1, 4], [2, 8], [1, 8], [4, 8]];
const GENERIC: [number, number][] = [[3, 4], [2, 3], [3, 8], [5, 16], [1, 16]];
const PRIMES = [1, 2, 3, 5, 7, 13, 31, 67, 97, 131, 257];

function randomNM(rng: Rng, rows: number, cols: number, n: number, m: number): NMSparseMatrix {
  return NMSparseMatrix.random(rows, cols, { n, m }, { seed: rng.int(0, 1e9), scale: 1 / Math.sqrt(cols) });
}

// ---- kernels against toDense() + the float64 reference ----------------------

interface FwdInputs {
  x: T2;
  W: NMSparseMatrix;
  dense: Float64Array;
  bias: Float32Array | null;
  activation: Act;
  packed: boolean;
}

/**
 * Every pattern; tokens 1…300 (1 and 2 take the decode kernel, the rest every
 * tile width); rows prime; cols multiples of m only, from one group up, so
 * rows of fewer than 8 kept values (no full chunk) and chunk tails occur.
 */
function forwardSamples(): { label: string; inputs: FwdInputs }[] {
  const rng = new Rng(4242);
  const out: { label: string; inputs: FwdInputs }[] = [];
  const tokensList = [1, 2, 3, 4, 5, 8, 9, 16, 17, 33, 64, 100, 130, 300];
  let i = 0;
  for (const [n, m] of [...TUNED, ...GENERIC]) {
    const count = TUNED.some(([a, b]) => a === n && b === m) ? 6 : 3;
    for (let s = 0; s < count; s++, i++) {
      const tokens = tokensList[(i * 5 + s) % tokensList.length];
      const rows = PRIMES[(i * 3 + s) % PRIMES.length];
      // keep tokens·rows·cols (the reference's work) modest
      const maxGroups = Math.max(1, Math.min(64, Math.floor(400000 / (tokens * rows * m))));
      const cols = m * rng.int(1, maxGroups);
      const W = randomNM(rng, rows, cols, n, m);
      const activation = ACTS[i % ACTS.length];
      const withBias = i % 3 !== 1;
      out.push({
        label: `${n}:${m} tokens=${tokens} rows=${rows} cols=${cols} act=${activation} bias=${withBias} packed=${i % 2 === 0}`,
        inputs: {
          x: { data: rng.floats(tokens * cols), shape: [tokens, cols] },
          W,
          dense: toDenseRef(W),
          bias: withBias ? rng.floats(rows) : null,
          activation,
          packed: i % 2 === 0,
        },
      });
    }
  }
  return out;
}

function denseF32(d: Float64Array): Float32Array {
  return Float32Array.from(d);
}

checkOp<FwdInputs, NMSparseMatrix | PackedNMLinear>({
  name: 'nmLinear',
  samples: forwardSamples,
  prepare: (s) => (s.packed ? prepackNM(s.W) : s.W),
  run: (w, s) => nmLinear(s.x, w, { bias: s.bias, activation: s.activation }),
  runAsync: (w, s) => nmLinearAsync(s.x, w, { bias: s.bias, activation: s.activation }),
  reference: (s) =>
    linearRef(s.x.data, s.x.shape[0], s.x.shape[1], denseF32(s.dense), s.W.rows, s.bias, s.activation),
  // fp32 sums of ≤ 1024 products of O(1/√cols) terms: ~1e-7 typical. A dropped
  // chunk, a wrong index or a lost tail is O(1e-2) or worse.
  tolerance: 1e-5,
});

interface BwdInputs {
  dy: T2;
  W: NMSparseMatrix;
  dense: Float64Array;
  packed: boolean;
}

function transposedSamples(): { label: string; inputs: BwdInputs }[] {
  const rng = new Rng(777);
  const out: { label: string; inputs: BwdInputs }[] = [];
  const tokensList = [1, 2, 5, 8, 13, 32, 70, 300];
  let i = 0;
  for (const [n, m] of [...TUNED, ...GENERIC]) {
    for (let s = 0; s < 2; s++, i++) {
      const tokens = tokensList[(i * 3 + s) % tokensList.length];
      const rows = PRIMES[(i * 5 + s) % PRIMES.length];
      const maxGroups = Math.max(1, Math.min(96, Math.floor(400000 / (tokens * rows * m))));
      const cols = m * rng.int(1, maxGroups);
      const W = randomNM(rng, rows, cols, n, m);
      out.push({
        label: `${n}:${m} tokens=${tokens} rows=${rows} cols=${cols} packed=${i % 2 === 0}`,
        inputs: { dy: { data: rng.floats(tokens * rows), shape: [tokens, rows] }, W, dense: toDenseRef(W), packed: i % 2 === 0 },
      });
    }
  }
  return out;
}

checkOp<BwdInputs, NMSparseMatrix | PackedNMLinear>({
  name: 'nmLinearTransposed',
  samples: transposedSamples,
  prepare: (s) => (s.packed ? prepackNM(s.W) : s.W),
  run: (w, s) => nmLinearTransposed(s.dy, w),
  runAsync: (w, s) => nmLinearTransposedAsync(s.dy, w),
  reference: (s) => transposedRef(s.dy.data, s.dy.shape[0], s.dense, s.W.rows, s.W.cols),
  tolerance: 1e-5,
});

test('nmLinear: packed and unpacked W give the same bits; out is used; inputs untouched; prepack keeps its ISA', () => {
  const rng = new Rng(9);
  for (const tokens of [1, 2, 7, 40]) {
    const W = randomNM(rng, 37, 64, 2, 4);
    const x = { data: rng.floats(tokens * 64), shape: [tokens, 64] };
    const copies = [x.data.slice(), W.values.slice(), W.indices.slice()];
    const a = nmLinear(x, W);
    const packed = W.prepack();
    const b = nmLinear(x, packed);
    assert.deepEqual(a.shape, [tokens, 37]);
    assert.deepEqual(Array.from(a.data), Array.from(b.data));
    const out = new Float32Array(tokens * 37 + 3).fill(5);
    const c = nmLinear(x, packed, { out });
    assert.equal(c.data.buffer, out.buffer);
    assert.deepEqual(Array.from(c.data), Array.from(a.data));
    assert.equal(out[tokens * 37], 5, 'elements past the result are left alone');
    assert.deepEqual([x.data, W.values, W.indices], copies);
    assert.equal(packed.outFeatures, 37);
    assert.equal(packed.inFeatures, 64);
    assert.equal(packed.isa, info().isa);
    assert.match(packed.kernel, /^f32-nm2:4-/);
    for (const isa of info().supportedIsas) {
      setIsa(isa);
      assert.deepEqual(Array.from(nmLinear(x, packed).data), Array.from(b.data));
    }
    setIsa(packed.isa);
  }
});

test('prepackNM: bytes per call of 2:4 fp32 are ≤ 0.57× the dense weight; generic patterns name the generic kernel', () => {
  const W = NMSparseMatrix.random(64, 256, { n: 2, m: 4 });
  const p = prepackNM(W);
  assert.equal(p.bytesPerCall, W.values.byteLength + W.indices.byteLength);
  assert.ok(p.bytesPerCall / (4 * 64 * 256) <= 0.57, `${p.bytesPerCall / (4 * 64 * 256)}`);
  assert.ok(p.bytes >= p.bytesPerCall);
  assert.equal(W.bytes, p.bytesPerCall);
  for (const [n, m] of TUNED) assert.equal(isTunedPattern({ n, m }), true);
  for (const [n, m] of GENERIC) {
    assert.equal(isTunedPattern({ n, m }), false);
    assert.match(prepackNM(NMSparseMatrix.random(3, m * 4, { n, m })).kernel, /^f32-nm-generic-/);
  }
  assert.equal(info().kernels.nm, `f32-nm-${info().isa}`);
});

test('nmLinear: concurrent async calls all resolve correctly', async () => {
  const rng = new Rng(10);
  const W = randomNM(rng, 50, 96, 1, 4);
  const packed = W.prepack();
  const dense = denseF32(toDenseRef(W));
  const xs = Array.from({ length: 8 }, (_, i) => ({ data: rng.floats((i + 1) * 96), shape: [i + 1, 96] }));
  const ys = await Promise.all(xs.map((x, i) => nmLinearAsync(x, i % 2 ? packed : W)));
  for (let i = 0; i < xs.length; i++) {
    assert.ok(relError(ys[i].data, linearRef(xs[i].data, i + 1, 96, dense, 50, null, 'none')) < 1e-5);
  }
});

// ---- format -------------------------------------------------------------------

/** Small integers so ties happen; sometimes NaN / ±Infinity. */
const weights = (rows: number, cols: number) =>
  fc.array(
    fc.oneof(
      { weight: 20, arbitrary: fc.integer({ min: -4, max: 4 }).map((v) => v / 2) },
      { weight: 1, arbitrary: fc.constantFrom(NaN, Infinity, -Infinity, -0) },
    ),
    { minLength: rows * cols, maxLength: rows * cols },
  );

const patternArb = fc.oneof(
  fc.constantFrom(...TUNED, ...GENERIC),
  fc.integer({ min: 2, max: 16 }).chain((m) => fc.tuple(fc.integer({ min: 1, max: m - 1 }), fc.constant(m))),
);

test('prune keeps exactly the n largest |w| per group (ties: lower column; NaN largest); nmMask and mask() agree', () => {
  fc.assert(
    fc.property(
      patternArb.chain(([n, m]) =>
        fc.tuple(fc.constant(n), fc.constant(m), fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 6 })).chain(
          ([n2, m2, rows, groups]) => fc.tuple(fc.constant([n2, m2, rows, groups * m2] as const), weights(rows, groups * m2)),
        ),
      ),
      ([[n, m, rows, cols], w]) => {
        const W = { data: Float32Array.from(w), shape: [rows, cols] };
        const P = NMSparseMatrix.prune(W, { n, m });
        const ref = pruneRef(W.data, rows, cols, n, m);
        assert.deepEqual(Array.from(P.indices), Array.from(ref.indices));
        assert.deepEqual(Array.from(P.values), Array.from(ref.values));
        const mask = P.mask();
        assert.deepEqual(Array.from(nmMask(W, { n, m }).data), Array.from(mask.data));
        assert.ok(isNM(P.toDense(), { n, m }));
        assert.ok(isNM(mask, { n, m }));
        // exactly n ones per group
        for (let r = 0; r < rows; r++)
          for (let g = 0; g < cols / m; g++) {
            let ones = 0;
            for (let i = 0; i < m; i++) ones += mask.data[r * cols + g * m + i];
            assert.equal(ones, n);
          }
        assert.equal(P.sparsity, 1 - n / m);
        assert.deepEqual(P.shape, [rows, cols]);
        assert.equal(P.indexBits, indexBits(m));
      },
    ),
    { numRuns: 300 },
  );
});

test('fromMask(toDense(), mask()) round-trips; fromParts(parts) accepts what the constructors make', () => {
  fc.assert(
    fc.property(patternArb, fc.integer({ min: 1, max: 6 }), fc.integer({ min: 1, max: 6 }), fc.nat(), ([n, m], rows, groups, seed) => {
      const W = NMSparseMatrix.random(rows, groups * m, { n, m }, { seed });
      const back = NMSparseMatrix.fromMask(W.toDense(), W.mask(), { n, m });
      assert.deepEqual(Array.from(back.values), Array.from(W.values));
      assert.deepEqual(Array.from(back.indices), Array.from(W.indices));
      const again = NMSparseMatrix.fromParts({ rows, cols: groups * m, n, m, values: W.values, indices: W.indices });
      assert.deepEqual(Array.from(again.toDense().data), Array.from(toDenseRef(W), (v) => Math.fround(v)));
    }),
    { numRuns: 200 },
  );
});

test('fromMask: fewer ones than n fill the lowest free columns with 0; more ones, or non-0/1 values, are RangeErrors', () => {
  const W = { data: Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8]), shape: [1, 8] };
  const M = NMSparseMatrix.fromMask(W, { data: Float32Array.from([0, 0, 1, 0, 0, 0, 0, 0]), shape: [1, 8] }, { n: 2, m: 4 });
  assert.deepEqual(Array.from(M.values), [0, 3, 0, 0]);
  assert.deepEqual(Array.from(M.toDense().data), [0, 0, 3, 0, 0, 0, 0, 0]);
  assert.throws(
    () => NMSparseMatrix.fromMask(W, { data: Float32Array.from([1, 1, 1, 0, 0, 0, 0, 0]), shape: [1, 8] }, { n: 2, m: 4 }),
    (e: Error) => e instanceof RangeError && /^NMSparseMatrix\.fromMask: mask is not 2:4: row 0, group 0 \(columns 0\.\.3\) has 3 ones/.test(e.message),
  );
  assert.throws(
    () => NMSparseMatrix.fromMask(W, { data: Float32Array.from([0, 0.5, 0, 0, 0, 0, 0, 0]), shape: [1, 8] }, { n: 2, m: 4 }),
    (e: Error) => e instanceof RangeError && /mask must hold only 0 and 1, got 0\.5.* at \[0, 1\]/.test(e.message),
  );
});

test('isNM, nmMask, srsteGrad, random', () => {
  const A = { data: Float32Array.from([1, 0, 0, 2, 0, 0, 0, 3, 3, 0, 0, 0]), shape: [2, 6] };
  assert.equal(isNM(A, { n: 2, m: 3 }), true);
  assert.equal(isNM(A, { n: 1, m: 3 }), false);
  assert.equal(isNM(A, { n: 1, m: 4 }), false, 'cols % m != 0');
  assert.equal(isNM({ data: Float32Array.from([NaN, 0, 1, 0]), shape: [1, 4] }, { n: 1, m: 4 }), false, 'NaN is nonzero');
  const rng = new Rng(3);
  const g = { data: rng.floats(24), shape: [4, 6] };
  const w = { data: rng.floats(24), shape: [4, 6] };
  const mask = nmMask(w, { n: 1, m: 3 });
  const s = srsteGrad(g, w, mask, 0.25);
  for (let i = 0; i < 24; i++) assert.equal(s.data[i], Math.fround(g.data[i] + Math.fround(0.25 * Math.fround((1 - mask.data[i]) * w.data[i]))));
  assert.deepEqual(s.shape, [4, 6]);
  const inPlace = g.data.slice();
  srsteGrad({ data: inPlace, shape: [4, 6] }, w, mask, 0.25, { out: inPlace });
  assert.deepEqual(Array.from(inPlace), Array.from(s.data));
  const r1 = NMSparseMatrix.random(9, 16, { n: 3, m: 8 }, { seed: 5 });
  const r2 = NMSparseMatrix.random(9, 16, { n: 3, m: 8 }, { seed: 5 });
  const r3 = NMSparseMatrix.random(9, 16, { n: 3, m: 8 }, { seed: 6 });
  assert.deepEqual(Array.from(r1.values), Array.from(r2.values));
  assert.notDeepEqual(Array.from(r1.values), Array.from(r3.values));
  assert.ok(r1.values.every((v) => v >= -1 && v < 1));
  assert.ok(isNM(r1.toDense(), { n: 3, m: 8 }));
});

// ---- CUTLASS 2:4 interchange ----------------------------------------------------

/** (i0, i1) per pattern id, and the nibble i0 | i1 << 2 PyTorch documents for it. */
const PAIRS: [number, number, number][] = [
  [0, 1, 0b0100],
  [0, 2, 0b1000],
  [0, 3, 0b1100],
  [1, 2, 0b1001],
  [1, 3, 0b1101],
  [2, 3, 0b1110],
];

function patterned(rows: number, cols: number, valueOf: (r: number, j: number) => number): NMSparseMatrix {
  const kept = cols / 2;
  const ib = cols / 8;
  const values = new Float32Array(rows * kept);
  const indices = new Uint8Array(rows * ib);
  for (let r = 0; r < rows; r++) {
    const row = indices.subarray(r * ib, (r + 1) * ib);
    for (let g = 0; g < cols / 4; g++) {
      const [i0, i1] = PAIRS[(r + g) % 6];
      writeIndex(row, 2 * g, 2, i0);
      writeIndex(row, 2 * g + 1, 2, i1);
      values[r * kept + 2 * g] = valueOf(r, 2 * g);
      values[r * kept + 2 * g + 1] = valueOf(r, 2 * g + 1);
    }
  }
  return NMSparseMatrix.fromParts({ rows, cols, n: 2, m: 4, values, indices });
}

test('toCutlass24: hand-worked layout of a 32×32 matrix (metadata words, their reordered places, fp16/bf16 bits)', () => {
  // Row r, group g keeps the pair PAIRS[(r + g) % 6]; values 1, -2, 0.5, 3, ...
  const vals = [1, -2, 0.5, 3];
  const W = patterned(32, 32, (r, j) => vals[(r + j) % 4]);
  const c = W.toCutlass24();
  assert.equal(c.meta.length, 32 * 2);
  assert.equal(c.values.length, 32 * 16);
  const i16 = (u: number) => (u << 16) >> 16;
  // meta[0][0]: row 0, groups 0..3 = (0,1)(0,2)(0,3)(1,2) → nibbles 4, 8, 12, 9 (group 0 in the low bits)
  // = 0x9C84. Reordered: (r, c) = (0, 0) stays at 0.
  assert.equal(c.meta[0], i16(0x9c84));
  // meta[0][1]: groups 4..7 = (1,3)(2,3)(0,1)(0,2) → 13, 14, 4, 8 = 0x84ED; row band 0 → dst row 0,
  // column 1 is odd on an even row: swapped into (1, 0) → offset 1·2 + 0 = 2.
  assert.equal(c.meta[2], i16(0x84ed));
  // meta[1][0]: row 1, groups 0..3 = (0,2)(0,3)(1,2)(1,3) → 0xD9C8; dst row (1 % 8)·4 = 4 → offset 8.
  assert.equal(c.meta[8], i16(0xd9c8));
  // meta[8][0]: row 8, groups 0..3 = (0,3)(1,2)(1,3)(2,3) → 0xED9C; dst row (8 % 32)/8 = 1, odd row,
  // even column: swapped into (0, 1) → offset 0·2 + 1 = 1.
  assert.equal(c.meta[1], i16(0xed9c));
  // meta[8][1]: dst row 1, column 1 → offset 1·2 + 1 = 3; row 8, groups 4..7 = (0,1)(0,2)(0,3)(1,2) → 0x9C84.
  assert.equal(c.meta[3], i16(0x9c84));
  // values: row-major [rows, cols/2] in column order; 1 → 0x3C00, -2 → 0xC000, 0.5 → 0x3800, 3 → 0x4200
  assert.deepEqual(Array.from(c.values.subarray(0, 4)), [0x3c00, 0xc000, 0x3800, 0x4200]);
  assert.deepEqual(Array.from(W.toCutlass24('bfloat16').values.subarray(0, 4)), [0x3f80, 0xc000, 0x3f00, 0x4040]);
  // and the whole array against the documented formula
  for (let r = 0; r < 32; r++)
    for (let m = 0; m < 2; m++) {
      let word = 0;
      for (let q = 0; q < 4; q++) word |= PAIRS[(r + m * 4 + q) % 6][2] << (4 * q);
      assert.equal(c.meta[cutlassMetaOffsetRef(r, m, 32)], i16(word), `meta[${r}][${m}]`);
    }
});

test('toCutlass24 / fromCutlass24 round trip (fp16 and bf16), and the metadata matches the documented reordering', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 }), fc.nat(), fc.constantFrom('float16', 'bfloat16'), (rb, cb, seed, dtype) => {
      const rows = 32 * rb, cols = 32 * cb;
      const W = NMSparseMatrix.random(rows, cols, { n: 2, m: 4 }, { seed });
      const c = W.toCutlass24(dtype as 'float16' | 'bfloat16');
      const back = NMSparseMatrix.fromCutlass24({ values: c.values, meta: c.meta, rows, cols, dtype: c.dtype });
      assert.deepEqual(Array.from(back.indices), Array.from(W.indices));
      const conv = dtype === 'float16' ? halfToNumber : bf16ToNumber;
      for (let i = 0; i < W.values.length; i++) {
        assert.equal(back.values[i], Math.fround(conv(c.values[i])));
        const rel = Math.abs(back.values[i] - W.values[i]) / Math.max(Math.abs(W.values[i]), 2 ** -14);
        assert.ok(rel <= (dtype === 'float16' ? 2 ** -11 : 2 ** -8), `value ${i}: ${W.values[i]} → ${back.values[i]}`);
      }
      // a second trip is exact
      const c2 = back.toCutlass24(dtype as 'float16' | 'bfloat16');
      assert.deepEqual(Array.from(c2.values), Array.from(c.values));
      assert.deepEqual(Array.from(c2.meta), Array.from(c.meta));
      // metadata from the format's indices and the documented placement
      const ib = cols / 8;
      for (let r = 0; r < rows; r++)
        for (let mc = 0; mc < cols / 16; mc++) {
          let word = 0;
          for (let q = 0; q < 4; q++) {
            const g = mc * 4 + q;
            const row = W.indices.subarray(r * ib, (r + 1) * ib);
            word |= (readIndex(row, 2 * g, 2) | (readIndex(row, 2 * g + 1, 2) << 2)) << (4 * q);
          }
          assert.equal(c.meta[cutlassMetaOffsetRef(r, mc, rows)], (word << 16) >> 16);
        }
    }),
    { numRuns: 25 },
  );
  // Uint16Array metadata is accepted too
  const W = NMSparseMatrix.random(32, 64, { n: 2, m: 4 }, { seed: 1 });
  const c = W.toCutlass24();
  const u = new Uint16Array(c.meta.buffer.slice(0));
  assert.deepEqual(Array.from(NMSparseMatrix.fromCutlass24({ values: c.values, meta: u, rows: 32, cols: 64 }).indices), Array.from(W.indices));
});

// ---- validation -------------------------------------------------------------------

function parts(rows: number, cols: number, n: number, m: number): NMParts {
  const W = NMSparseMatrix.random(rows, cols, { n, m }, { seed: rows * 100 + cols });
  return { rows, cols, n, m, values: W.values.slice(), indices: W.indices.slice() };
}

function withIndex(p: NMParts, row: number, j: number, value: number): NMParts {
  const ib = indexBytesPerRow(p.cols, p.n, p.m);
  const idx = p.indices.slice();
  writeIndex(idx.subarray(row * ib, (row + 1) * ib), j, indexBits(p.m), value);
  return { ...p, indices: idx };
}

const FP = 'NMSparseMatrix.fromParts';
const fromParts = (p: unknown) => NMSparseMatrix.fromParts(p as NMParts);
const badParts: [string, () => unknown, typeof TypeError, RegExp][] = [
  ['not an object', () => fromParts(5), TypeError, /parts must be an N:M matrix/],
  ['rows missing', () => fromParts({ ...parts(2, 8, 2, 4), rows: undefined }), TypeError, /parts\.rows must be an integer/],
  ['rows 0', () => fromParts({ ...parts(2, 8, 2, 4), rows: 0 }), RangeError, /parts\.rows must be ≥ 1/],
  ['cols fractional', () => fromParts({ ...parts(2, 8, 2, 4), cols: 7.5 }), RangeError, /parts\.cols must be an integer/],
  ['m 17', () => fromParts({ ...parts(2, 8, 2, 4), m: 17 }), RangeError, /parts\.m must be in 2\.\.16, got 17/],
  ['m 1', () => fromParts({ ...parts(2, 8, 2, 4), m: 1 }), RangeError, /parts\.m must be in 2\.\.16, got 1/],
  ['n = m', () => fromParts({ ...parts(2, 8, 2, 4), n: 4 }), RangeError, /parts\.n must be < m/],
  ['n a string', () => fromParts({ ...parts(2, 8, 2, 4), n: '2' }), TypeError, /parts\.n must be an integer/],
  ['cols % m', () => fromParts({ ...parts(2, 8, 2, 4), cols: 10 }), RangeError, /cols \(10\) must be a multiple of m = 4/],
  ['values Float64Array', () => fromParts({ ...parts(2, 8, 2, 4), values: new Float64Array(8) }), TypeError, /parts\.values must be a Float32Array, got a Float64Array/],
  ['values short', () => fromParts({ ...parts(2, 8, 2, 4), values: new Float32Array(7) }), RangeError, /parts\.values has 7 elements but rows·cols·n\/m = 8/],
  ['indices Int8Array', () => fromParts({ ...parts(2, 8, 2, 4), indices: new Int8Array(2) }), TypeError, /parts\.indices must be a Uint8Array/],
  ['indices long', () => fromParts({ ...parts(2, 8, 2, 4), indices: new Uint8Array(3) }), RangeError, /parts\.indices has 3 bytes but 2 rows of 4 indices × 2 bits need 2/],
  ['index ≥ m (m = 3)', () => fromParts(withIndex(parts(2, 9, 1, 3), 1, 2, 3)), RangeError, /row 1, group 2 \(columns 6\.\.8\) slot 0 has index 3 ≥ m = 3/],
  ['index ≥ m (m = 5)', () => fromParts(withIndex(parts(1, 10, 2, 5), 0, 3, 6)), RangeError, /group 1 .* has index 6 ≥ m = 5/],
  ['duplicate index', () => fromParts(withIndex(withIndex(parts(3, 8, 2, 4), 2, 2, 1), 2, 3, 1)), RangeError, /row 2, group 1 \(columns 4\.\.7\) keeps index 1 twice/],
  ['decreasing', () => fromParts(withIndex(withIndex(parts(3, 8, 2, 4), 0, 0, 3), 0, 1, 2)), RangeError, /row 0, group 0 .* indices must increase within a group, got 3 then 2/],
  ['padding bits', () => {
    const p = parts(2, 12, 1, 4); // 3 indices × 2 bits per row: bits 6, 7 unused
    const idx = p.indices.slice();
    idx[1] |= 0x80;
    return fromParts({ ...p, indices: idx });
  }, RangeError, /row 1 has nonzero unused bits/],
];
checkBadInputs(
  'NMSparseMatrix.fromParts',
  badParts.map(([label, call, error, message]) => ({ label, call, error, message: new RegExp(`^${FP}: .*` + message.source) })),
);

test('fromParts / nmLinear / prepackNM: fuzzed metadata and shapes throw TypeError/RangeError or are valid; never a crash', () => {
  fc.assert(
    fc.property(
      fc.constantFrom(...TUNED, ...GENERIC),
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 1, max: 5 }),
      fc.array(fc.tuple(fc.nat(), fc.nat(255)), { maxLength: 3 }),
      fc.integer({ min: -2, max: 2 }),
      fc.integer({ min: -2, max: 2 }),
      ([n, m], rows, groups, flips, dv, di) => {
        const cols = groups * m;
        const p = parts(rows, cols, n, m);
        const idx = new Uint8Array(Math.max(0, p.indices.length + di));
        idx.set(p.indices.subarray(0, idx.length));
        for (const [pos, byte] of flips) if (idx.length) idx[pos % idx.length] = byte;
        const q = { ...p, indices: idx, values: new Float32Array(Math.max(0, p.values.length + dv)) };
        let valid = true;
        try {
          fromParts(q);
        } catch (e) {
          valid = false;
          assert.ok(e instanceof TypeError || e instanceof RangeError, String(e));
        }
        // valid exactly when the lengths fit and every group's indices are increasing and < m with zero padding
        let expect = dv === 0 && di === 0;
        if (expect) {
          const ib = indexBytesPerRow(cols, n, m);
          const kept = keptPerRow(cols, n, m);
          for (let r = 0; r < rows && expect; r++) {
            const row = idx.subarray(r * ib, (r + 1) * ib);
            for (let g = 0; g < groups && expect; g++)
              for (let s = 0; s < n; s++) {
                const v = readIndex(row, g * n + s, indexBits(m));
                if (v >= m || (s > 0 && v <= readIndex(row, g * n + s - 1, indexBits(m)))) expect = false;
              }
            const used = kept * indexBits(m);
            if (used % 8 && row[ib - 1] >> used % 8) expect = false;
          }
        }
        assert.equal(valid, expect);
        for (const call of [
          () => nmLinear({ data: new Float32Array(cols), shape: [1, cols] }, q),
          () => nmLinearTransposed({ data: new Float32Array(rows * 3), shape: [3, rows] }, q),
          () => prepackNM(q),
          () => native.nmToDense(q),
        ]) {
          try {
            call();
            assert.ok(valid, 'an invalid matrix was accepted');
          } catch (e) {
            assert.ok(!valid && (e instanceof TypeError || e instanceof RangeError), String(e));
          }
        }
      },
    ),
    { numRuns: 400 },
  );
});

// ---- bad inputs of the ops ---------------------------------------------------------

type AnyFn = (...a: unknown[]) => unknown;
const okW = () => NMSparseMatrix.random(4, 8, { n: 2, m: 4 }, { seed: 1 });
const okX = () => ({ data: new Float32Array(16), shape: [2, 8] });

function linearBadCases(fn: AnyFn, fname: string): BadCase[] {
  const T = TypeError;
  const R = RangeError;
  const cases: [string, unknown[], typeof TypeError, RegExp][] = [
    ['x missing', [undefined, okW()], T, /x must be a tensor/],
    ['x.data Float64Array', [{ data: new Float64Array(16), shape: [2, 8] }, okW()], T, /x\.data must be a Float32Array/],
    ['x.shape rank 1', [{ data: new Float32Array(16), shape: [16] }, okW()], R, /x\.shape must have 2 dimensions/],
    ['x.data short', [{ data: new Float32Array(15), shape: [2, 8] }, okW()], R, /x\.data has 15 elements/],
    ['W missing', [okX(), undefined], T, /W must be an N:M matrix/],
    ['W a dense tensor', [okX(), { data: new Float32Array(32), shape: [4, 8] }], T, /W\.rows must be an integer/],
    ['W a PackedLinear', [okX(), native.prepackLinear({ data: new Float32Array(32), shape: [4, 8] })], T, /W\.rows must be an integer/],
    ['W in ≠ x in', [{ data: new Float32Array(24), shape: [2, 12] }, okW()], R, /W has in = 8 columns but x has in = 12/],
    ['packed W for another in', [{ data: new Float32Array(24), shape: [2, 12] }, prepackNM(okW())], R, /W has in = 8 columns but x has in = 12/],
    ['W duplicate index', [okX(), withIndex(withIndex(parts(4, 8, 2, 4), 1, 0, 2), 1, 1, 2)], R, /W\.indices: row 1, group 0 .* keeps index 2 twice/],
    ['options a number', [okX(), okW(), 3], T, /options must be an object/],
    ['bias wrong length', [okX(), okW(), { bias: new Float32Array(3) }], R, /bias has 3 elements but W has out = 4/],
    ['bias Float64Array', [okX(), okW(), { bias: new Float64Array(4) }], T, /bias must be a Float32Array/],
    ['activation unknown', [okX(), okW(), { activation: 'tanh' }], R, /activation must be one of/],
    ['out too small', [okX(), okW(), { out: new Float32Array(7) }], R, /out is too small: y \[tokens, out\] needs 8 floats/],
  ];
  return cases.map(([label, args, error, message]) => ({
    label,
    call: () => fn(...args),
    error,
    message: new RegExp(`^${fname}: .*` + message.source),
  }));
}
checkBadInputs('nmLinear', linearBadCases(nmLinear as AnyFn, 'nmLinear'));
checkBadInputs('nmLinearAsync', linearBadCases(nmLinearAsync as AnyFn, 'nmLinearAsync'));
checkBadInputs('nmLinearTransposed', [
  { label: 'dy width ≠ out', call: () => nmLinearTransposed({ data: new Float32Array(6), shape: [2, 3] }, okW()), error: RangeError, message: /^nmLinearTransposed: dy has 3 columns \(dy\.shape\[1\]\) but W has out = 4 rows/ },
  { label: 'dy rank 3', call: () => nmLinearTransposed({ data: new Float32Array(8), shape: [2, 1, 4] }, okW()), error: RangeError, message: /^nmLinearTransposed: dy\.shape must have 2 dimensions/ },
  { label: 'out too small', call: () => nmLinearTransposedAsync({ data: new Float32Array(8), shape: [2, 4] }, okW(), { out: new Float32Array(15) }), error: RangeError, message: /^nmLinearTransposedAsync: out is too small: dx \[tokens, in\] needs 16/ },
]);
checkBadInputs('N:M constructors and helpers', [
  { label: 'prune pattern missing', call: () => NMSparseMatrix.prune(okX(), undefined as never), error: TypeError, message: /^NMSparseMatrix\.prune: pattern must be an object \{ n, m \}/ },
  { label: 'prune cols % m', call: () => NMSparseMatrix.prune({ data: new Float32Array(6), shape: [1, 6] }, { n: 2, m: 4 }), error: RangeError, message: /^NMSparseMatrix\.prune: W: cols \(6\) must be a multiple of m = 4/ },
  { label: 'prune n ≥ m', call: () => NMSparseMatrix.prune(okX(), { n: 4, m: 4 }), error: RangeError, message: /^NMSparseMatrix\.prune: n must be < m/ },
  { label: 'prune m fractional', call: () => NMSparseMatrix.prune(okX(), { n: 1, m: 2.5 }), error: RangeError, message: /^NMSparseMatrix\.prune: m must be an integer/ },
  { label: 'fromMask shape mismatch', call: () => NMSparseMatrix.fromMask(okX(), { data: new Float32Array(8), shape: [1, 8] }, { n: 2, m: 4 }), error: RangeError, message: /^NMSparseMatrix\.fromMask: mask\.shape \[1, 8\] must equal W\.shape \[2, 8\]/ },
  { label: 'random scale 0', call: () => NMSparseMatrix.random(2, 8, { n: 2, m: 4 }, { scale: 0 }), error: RangeError, message: /^NMSparseMatrix\.random: scale must be > 0/ },
  { label: 'random seed negative', call: () => NMSparseMatrix.random(2, 8, { n: 2, m: 4 }, { seed: -1 }), error: RangeError, message: /^NMSparseMatrix\.random: seed must be an integer ≥ 0/ },
  { label: 'isNM m 17', call: () => isNM(okX(), { n: 1, m: 17 }), error: RangeError, message: /^isNM: m must be in 2\.\.16/ },
  { label: 'nmMask W rank 1', call: () => nmMask({ data: new Float32Array(8), shape: [8] }, { n: 1, m: 4 }), error: RangeError, message: /^nmMask: W\.shape must have 2 dimensions/ },
  { label: 'srsteGrad shape mismatch', call: () => srsteGrad(okX(), { data: new Float32Array(16), shape: [4, 4] }, okX(), 0.1), error: RangeError, message: /^srsteGrad: W\.shape \[4, 4\] must equal grad\.shape \[2, 8\]/ },
  { label: 'srsteGrad lambda NaN', call: () => srsteGrad(okX(), okX(), okX(), NaN), error: RangeError, message: /^srsteGrad: lambda must be finite/ },
  { label: 'srsteGrad lambda string', call: () => srsteGrad(okX(), okX(), okX(), '1' as never), error: TypeError, message: /^srsteGrad: lambda must be a number/ },
  { label: 'toCutlass24 not 2:4', call: () => NMSparseMatrix.random(32, 32, { n: 1, m: 4 }).toCutlass24(), error: RangeError, message: /^NMSparseMatrix\.toCutlass24: only 2:4 matrices have a CUTLASS layout, this one is 1:4/ },
  { label: 'toCutlass24 rows % 32', call: () => NMSparseMatrix.random(16, 32, { n: 2, m: 4 }).toCutlass24(), error: RangeError, message: /rows % 32 == 0 and cols % 32 == 0, got \[16, 32\]/ },
  { label: 'toCutlass24 dtype', call: () => NMSparseMatrix.random(32, 32, { n: 2, m: 4 }).toCutlass24('float8' as never), error: RangeError, message: /dtype must be 'float16' or 'bfloat16', got 'float8'/ },
  { label: 'fromCutlass24 meta length', call: () => NMSparseMatrix.fromCutlass24({ values: new Uint16Array(512), meta: new Int16Array(63), rows: 32, cols: 32 }), error: RangeError, message: /^NMSparseMatrix\.fromCutlass24: meta has 63 elements but \[rows, cols\/16\] needs 64/ },
  { label: 'fromCutlass24 meta Int32Array', call: () => NMSparseMatrix.fromCutlass24({ values: new Uint16Array(512), meta: new Int32Array(64) as never, rows: 32, cols: 32 }), error: TypeError, message: /meta must be an Int16Array \(or Uint16Array\)/ },
  { label: 'fromCutlass24 equal indices', call: () => {
    const c = NMSparseMatrix.random(32, 32, { n: 2, m: 4 }, { seed: 2 }).toCutlass24();
    const meta = c.meta.slice();
    meta[cutlassMetaOffsetRef(5, 1, 32)] = 0x0005; // row 5, group 4: nibble 0b0101 = indices (1, 1)
    return NMSparseMatrix.fromCutlass24({ values: c.values, meta, rows: 32, cols: 32 });
  }, error: RangeError, message: /meta: row 5, group 4 \(columns 16\.\.19\) encodes indices \(1, 1\)/ },
  { label: 'PackedNMLinear constructed directly', call: () => new (native as unknown as { PackedNMLinear: new (...a: unknown[]) => unknown }).PackedNMLinear({}), error: TypeError, message: /use prepackNM/ },
]);

test('raw N:M bindings survive arbitrary garbage (fast-check): only TypeError/RangeError, never a crash', () => {
  const tensorish = fc.record({
    data: fc.oneof(fc.float32Array({ maxLength: 40 }), fc.uint8Array({ maxLength: 8 }), fc.int16Array({ maxLength: 8 })),
    shape: fc.array(fc.oneof(fc.integer({ min: -2, max: 9 }), fc.double()), { maxLength: 3 }),
  });
  const nmish = fc.record(
    {
      rows: fc.oneof(fc.integer({ min: -1, max: 6 }), fc.double(), fc.string()),
      cols: fc.oneof(fc.integer({ min: -1, max: 40 }), fc.double()),
      n: fc.integer({ min: -1, max: 17 }),
      m: fc.integer({ min: -1, max: 18 }),
      values: fc.oneof(fc.float32Array({ maxLength: 40 }), fc.anything()),
      indices: fc.oneof(fc.uint8Array({ maxLength: 20 }), fc.anything()),
    },
    { requiredKeys: [] },
  );
  const arg = fc.oneof(fc.anything(), tensorish, nmish, fc.integer({ min: -2, max: 40 }), fc.constantFrom('float16', 'bfloat16'));
  const fns: AnyFn[] = [
    native.nmPrune, native.nmFromMask, native.nmValidate, native.nmToDense, native.nmMaskOf, native.nmPruneMask,
    native.nmIsNM, native.srsteGrad, native.nmToCutlass24, native.nmFromCutlass24, native.prepackNM,
    native.nmLinear, native.nmLinearTransposed, native.nmIsTuned,
  ] as AnyFn[];
  fc.assert(
    fc.property(fc.nat(fns.length - 1), fc.array(arg, { maxLength: 6 }), (fi, args) => {
      try {
        fns[fi](...args);
        return true;
      } catch (e) {
        return e instanceof TypeError || e instanceof RangeError;
      }
    }),
    { numRuns: 3000 },
  );
});
