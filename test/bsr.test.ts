import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  BlockSparseMatrix,
  bsrLinear,
  bsrLinearAsync,
  bsrLinearTransposed,
  bsrLinearTransposedAsync,
  info,
  prepackBsrLinear,
  setIsa,
  sddmm,
  sddmmAsync,
  type PackedBsrLinear,
} from '../lib/index';
import { native } from '../lib/native';
import { checkBadInputs, checkOp, relError, type BadCase } from './harness';
import { type Act } from './reference/dense';
import {
  blockNormsRef,
  bsrLinearRef,
  bsrLinearTransposedRef,
  fromBlockMaskRef,
  sddmmRef,
  toDenseRef,
  topBlocksRef,
  transposeRef,
  type BsrParts,
} from './reference/bsr';
import { Rng } from './reference/rng';

type AnyFn = (...a: unknown[]) => unknown;
const ACTS: Act[] = ['none', 'relu', 'gelu', 'gelu_tanh', 'silu'];

// ---- patterns ---------------------------------------------------------------

type PatternKind = 'random' | 'empty' | 'full' | 'single' | 'emptyRows' | 'fullRow';

/** A block pattern as a keep mask over [nbr, nbc] blocks. */
function pattern(rng: Rng, nbr: number, nbc: number, kind: PatternKind, density = 0.4): Uint8Array {
  const keep = new Uint8Array(nbr * nbc);
  switch (kind) {
    case 'random':
      for (let i = 0; i < keep.length; i++) keep[i] = rng.next() < density ? 1 : 0;
      break;
    case 'empty':
      break;
    case 'full':
      keep.fill(1);
      break;
    case 'single':
      keep[rng.int(0, keep.length - 1)] = 1;
      break;
    case 'emptyRows': // every other block row empty, the rest random
      for (let R = 1; R < nbr; R += 2) for (let c = 0; c < nbc; c++) keep[R * nbc + c] = rng.next() < 0.6 ? 1 : 0;
      break;
    case 'fullRow': {
      // one fully dense block row, one empty, the rest sparse
      const full = rng.int(0, nbr - 1);
      for (let R = 0; R < nbr; R++)
        for (let c = 0; c < nbc; c++) keep[R * nbc + c] = R === full ? 1 : rng.next() < 0.2 ? 1 : 0;
      if (nbr > 1) for (let c = 0; c < nbc; c++) keep[((full + 1) % nbr) * nbc + c] = 0;
      break;
    }
  }
  return keep;
}

/** A BlockSparseMatrix with random values on the given pattern, built through fromParts. */
function makeBsr(rng: Rng, shape: [number, number], blockSize: [number, number], keep: Uint8Array, scale = 1): BlockSparseMatrix {
  const dense = rng.floats(shape[0] * shape[1], scale);
  const p = fromBlockMaskRef(dense, shape, blockSize, keep);
  return BlockSparseMatrix.fromParts(p);
}

// Tuned block shapes, an odd one, and a few more heights that exercise every
// row-group split (1..8 rows) and tile width.
const BLOCKS: [number, number][] = [[1, 16], [4, 1], [8, 8], [16, 16], [32, 32], [64, 64], [3, 5], [2, 3], [7, 2], [5, 4]];
const KINDS: PatternKind[] = ['random', 'empty', 'full', 'single', 'emptyRows', 'fullRow'];

interface Case {
  label: string;
  W: BlockSparseMatrix;
  m: number;
}

/** (W, tokens) over every block shape × pattern kind, with token counts at tile edges. */
function weightCases(seed: number): Case[] {
  const rng = new Rng(seed);
  // tokens: 1, < and > one 8/16-token tile, a count that picks the 48-token tile for 1-row blocks
  const TOKENS = [1, 7, 16, 17, 33, 144];
  const cases: Case[] = [];
  let i = 0;
  for (const [br, bc] of BLOCKS) {
    const big = br * bc >= 1024;
    for (const kind of KINDS) {
      if (big && kind !== 'random' && kind !== 'fullRow' && kind !== 'single') continue;
      const nbr = big ? rng.int(1, 3) : rng.int(1, 6);
      const nbc = big ? rng.int(1, 3) : rng.int(1, 9);
      const shape: [number, number] = [nbr * br, nbc * bc];
      const m = TOKENS[i++ % TOKENS.length];
      const W = makeBsr(rng, shape, [br, bc], pattern(rng, nbr, nbc, kind), 1 / Math.sqrt(shape[1]));
      cases.push({ label: `W ${shape.join('×')} block ${br}×${bc} ${kind} (${W.nnzBlocks} blocks) tokens=${m}`, W, m });
    }
  }
  // Wide W (in > 1024): several K slices per task, several token tiles per slice.
  for (const [shape, block, m] of [
    [[48, 3200], [16, 16], 70],
    [[8, 3300], [4, 1], 37],
    [[3, 3200], [1, 16], 100],
    [[30, 3000], [3, 5], 20],
  ] as [[number, number], [number, number], number][]) {
    const W = makeBsr(rng, shape, block, pattern(rng, shape[0] / block[0], shape[1] / block[1], 'random', 0.3), 1 / Math.sqrt(shape[1]));
    cases.push({ label: `W ${shape.join('×')} block ${block.join('×')} wide (${W.nnzBlocks} blocks) tokens=${m}`, W, m });
  }
  return cases;
}

/**
 * W with more than 8 MiB of kept values: too many to stay in cache between
 * token tiles, so bsrLinear computes several tiles per pass over W, K slice by
 * K slice (the transposed product gets the tile groups without slices).
 */
function bigCases(seed: number): Case[] {
  const rng = new Rng(seed);
  const W = makeBsr(rng, [128, 20480], [32, 32], pattern(rng, 4, 640, 'random', 0.9), 1 / Math.sqrt(20480));
  return [{ label: `W 128×20480 block 32×32 (${W.nnzBlocks} blocks, ${((W.values.length * 4) / 2 ** 20).toFixed(1)} MiB) tokens=70`, W, m: 70 }];
}

// ---- bsrLinear ----------------------------------------------------------------

interface LinInputs {
  x: { data: Float32Array; shape: number[] };
  W: BlockSparseMatrix;
  bias: Float32Array | null;
  activation: Act;
  packed: boolean;
}

checkOp<LinInputs, BlockSparseMatrix | PackedBsrLinear>({
  name: 'bsrLinear',
  samples: () => {
    const rng = new Rng(31);
    return [...weightCases(101), ...bigCases(102)].map((c, i) => {
      const activation = ACTS[i % ACTS.length];
      const withBias = i % 3 !== 1;
      const packed = i % 2 === 0;
      return {
        label: `${c.label} act=${activation} bias=${withBias} packed=${packed}`,
        inputs: {
          x: { data: rng.floats(c.m * c.W.shape[1]), shape: [c.m, c.W.shape[1]] },
          W: c.W,
          bias: withBias ? rng.floats(c.W.shape[0]) : null,
          activation,
          packed,
        },
      };
    });
  },
  prepare: (s) => (s.packed ? prepackBsrLinear(s.W) : s.W),
  run: (w, s) => bsrLinear(s.x, w, { bias: s.bias, activation: s.activation }),
  runAsync: (w, s) => bsrLinearAsync(s.x, w, { bias: s.bias, activation: s.activation }),
  reference: (s) => bsrLinearRef(s.x.data, s.x.shape[0], s.W, s.bias, s.activation),
  tolerance: 1e-5,
});

// ---- bsrLinearTransposed --------------------------------------------------------

interface TrInputs {
  dy: { data: Float32Array; shape: number[] };
  W: BlockSparseMatrix;
  packed: boolean;
}

checkOp<TrInputs, BlockSparseMatrix | PackedBsrLinear>({
  name: 'bsrLinearTransposed',
  samples: () => {
    const rng = new Rng(32);
    return [...weightCases(202), ...bigCases(203)].map((c, i) => ({
      label: `${c.label} packed=${i % 2 === 0}`,
      inputs: { dy: { data: rng.floats(c.m * c.W.shape[0]), shape: [c.m, c.W.shape[0]] }, W: c.W, packed: i % 2 === 0 },
    }));
  },
  prepare: (s) => (s.packed ? prepackBsrLinear(s.W) : s.W),
  run: (w, s) => bsrLinearTransposed(s.dy, w),
  runAsync: (w, s) => bsrLinearTransposedAsync(s.dy, w),
  reference: (s) => bsrLinearTransposedRef(s.dy.data, s.dy.shape[0], s.W),
  tolerance: 1e-5,
});

// ---- sddmm ----------------------------------------------------------------------

interface SdInputs {
  a: { data: Float32Array; shape: number[] };
  b: { data: Float32Array; shape: number[] };
  mask: BlockSparseMatrix;
}

checkOp<SdInputs, SdInputs>({
  name: 'sddmm',
  samples: () => {
    const rng = new Rng(33);
    // k: 1, odd, one full KC slice (192/256) and past it
    const KS = [1, 7, 64, 300];
    const out = weightCases(303).map((c, i) => {
      const k = KS[i % KS.length];
      const [m, n] = c.W.shape;
      return {
        label: `${c.label.replace(/ tokens=\d+/, '')} k=${k}`,
        inputs: { a: { data: rng.floats(m * k), shape: [m, k] }, b: { data: rng.floats(n * k), shape: [n, k] }, mask: c.W },
      };
    });
    // A block row with more kept blocks than one gathered batch (256 columns).
    const mask = makeBsr(rng, [3, 640], [1, 16], pattern(rng, 3, 40, 'random', 0.9));
    out.push({
      label: `mask 3×640 block 1×16 (${mask.nnzBlocks} blocks, > 1 batch per row) k=20`,
      inputs: { a: { data: rng.floats(3 * 20), shape: [3, 20] }, b: { data: rng.floats(640 * 20), shape: [640, 20] }, mask },
    });
    return out;
  },
  run: (_p, s) => sddmm(s.a, s.b, s.mask).values,
  runAsync: async (_p, s) => (await sddmmAsync(s.a, s.b, s.mask)).values,
  reference: (s) => sddmmRef(s.a.data, s.b.data, s.a.shape[1], s.mask),
  tolerance: 1e-5,
});

// ---- behaviour ------------------------------------------------------------------

test('bsrLinear: packed and plain W give the same bits; out is used and may be larger; inputs unmodified', () => {
  const rng = new Rng(40);
  const W = makeBsr(rng, [64, 48], [16, 16], pattern(rng, 4, 3, 'random'));
  const x = { data: rng.floats(5 * 48), shape: [5, 48] };
  const bias = rng.floats(64);
  const copies = [x.data.slice(), W.values.slice(), W.rowPtr.slice(), W.colIdx.slice(), bias.slice()];
  const a = bsrLinear(x, W, { bias, activation: 'silu' });
  const b = bsrLinear(x, prepackBsrLinear(W), { bias, activation: 'silu' });
  assert.deepEqual(a.shape, [5, 64]);
  assert.deepEqual(Array.from(a.data), Array.from(b.data));
  const out = new Float32Array(400).fill(7);
  const c = bsrLinear(x, W, { bias, activation: 'silu', out });
  assert.equal(c.data.buffer, out.buffer);
  assert.equal(c.data.length, 320);
  assert.equal(out[320], 7, 'elements past the result are left alone');
  assert.deepEqual(Array.from(c.data), Array.from(a.data));
  assert.deepEqual([x.data, W.values, W.rowPtr, W.colIdx, bias], copies);
  // transposed and sddmm outputs into out as well
  const dxOut = new Float32Array(5 * 48 + 3);
  const dy = { data: rng.floats(5 * 64), shape: [5, 64] };
  assert.equal(bsrLinearTransposed(dy, W, { out: dxOut }).data.buffer, dxOut.buffer);
  const vOut = new Float32Array(W.values.length + 5);
  const C = sddmm({ data: rng.floats(64 * 9), shape: [64, 9] }, { data: rng.floats(48 * 9), shape: [48, 9] }, W, { out: vOut });
  assert.equal(C.values.buffer, vOut.buffer);
  assert.equal(C.values.length, W.values.length);
});

test('bsrLinear: density 0 gives act(bias); a fully dense W matches the dense product', () => {
  const rng = new Rng(41);
  const empty = makeBsr(rng, [32, 64], [8, 8], pattern(rng, 4, 8, 'empty'));
  assert.equal(empty.nnzBlocks, 0);
  assert.equal(empty.density, 0);
  const bias = rng.floats(32);
  const x = { data: rng.floats(3 * 64), shape: [3, 64] };
  const y = bsrLinear(x, empty, { bias, activation: 'relu' });
  for (let t = 0; t < 3; t++) for (let o = 0; o < 32; o++) assert.equal(y.data[t * 32 + o], Math.max(0, bias[o]));
  const full = makeBsr(rng, [32, 64], [8, 8], pattern(rng, 4, 8, 'full'));
  assert.equal(full.density, 1);
  const yf = bsrLinear(x, full);
  const dense = toDenseRef(full);
  const ref = new Float64Array(3 * 32);
  for (let t = 0; t < 3; t++)
    for (let o = 0; o < 32; o++) for (let i = 0; i < 64; i++) ref[t * 32 + o] += x.data[t * 64 + i] * dense[o * 64 + i];
  assert.ok(relError(yf.data, ref) < 1e-6);
});

test('prepackBsrLinear: accessors; the packed weight keeps its kernel after the ISA changes', () => {
  const rng = new Rng(42);
  const W = makeBsr(rng, [96, 64], [32, 32], pattern(rng, 3, 2, 'random', 0.5));
  const start = info().isa;
  const p = prepackBsrLinear(W);
  assert.equal(p.outFeatures, 96);
  assert.equal(p.inFeatures, 64);
  assert.deepEqual(p.blockSize, [32, 32]);
  assert.equal(p.nnzBlocks, W.nnzBlocks);
  assert.equal(p.density, W.density);
  assert.equal(p.isa, start);
  assert.equal(p.kernel, info().kernels.bsr);
  assert.match(p.kernel, /bsr/);
  assert.ok(p.bytes >= W.values.length * 4);
  const x = { data: rng.floats(20 * 64), shape: [20, 64] };
  const dy = { data: rng.floats(20 * 96), shape: [20, 96] };
  const y0 = Array.from(bsrLinear(x, p).data);
  const dx0 = Array.from(bsrLinearTransposed(dy, p).data);
  for (const isa of info().supportedIsas) {
    setIsa(isa);
    assert.deepEqual(Array.from(bsrLinear(x, p).data), y0);
    assert.deepEqual(Array.from(bsrLinearTransposed(dy, p).data), dx0);
  }
  setIsa(start);
});

test('concurrent async calls (plain, packed, transposed, sddmm) all resolve correctly', async () => {
  const rng = new Rng(43);
  const W = makeBsr(rng, [128, 96], [16, 16], pattern(rng, 8, 6, 'random', 0.5));
  const p = prepackBsrLinear(W);
  const xs = Array.from({ length: 6 }, () => ({ data: rng.floats(21 * 96), shape: [21, 96] }));
  const dys = Array.from({ length: 6 }, () => ({ data: rng.floats(21 * 128), shape: [21, 128] }));
  const [ys, dxs, cs] = await Promise.all([
    Promise.all(xs.map((x, i) => bsrLinearAsync(x, i % 2 ? p : W))),
    Promise.all(dys.map((dy, i) => bsrLinearTransposedAsync(dy, i % 2 ? p : W))),
    Promise.all(xs.map((x, i) => sddmmAsync({ data: dys[i].data, shape: [128, 21] }, { data: x.data, shape: [96, 21] }, W))),
  ]);
  for (let i = 0; i < xs.length; i++) {
    assert.ok(relError(ys[i].data, bsrLinearRef(xs[i].data, 21, W, null, 'none')) < 1e-5);
    assert.ok(relError(dxs[i].data, bsrLinearTransposedRef(dys[i].data, 21, W)) < 1e-5);
    assert.ok(relError(cs[i].values, sddmmRef(dys[i].data, xs[i].data, 21, W)) < 1e-5);
    assert.deepEqual(Array.from(cs[i].rowPtr), Array.from(W.rowPtr));
    assert.deepEqual(Array.from(cs[i].colIdx), Array.from(W.colIdx));
  }
});

test('async: changing rowPtr/colIdx after the call cannot reach the running kernel', async () => {
  const rng = new Rng(44);
  const W = makeBsr(rng, [64, 64], [8, 8], pattern(rng, 8, 8, 'random', 0.5));
  const M = makeBsr(rng, [40, 40], [8, 8], pattern(rng, 5, 5, 'random', 0.5));
  const x = { data: rng.floats(40 * 64), shape: [40, 64] };
  const ref = bsrLinearRef(x.data, 40, W, null, 'none');
  const Mcopy = { shape: M.shape, blockSize: M.blockSize, rowPtr: M.rowPtr.slice(), colIdx: M.colIdx.slice(), values: M.values };
  const refC = sddmmRef(x.data, x.data, 64, Mcopy);
  const pending = bsrLinearAsync(x, W);
  const pendingT = bsrLinearTransposedAsync(x, W);
  const pendingC = sddmmAsync(x, x, M);
  for (const B of [W, M]) {
    B.colIdx.fill(1_000_000);
    B.rowPtr.fill(-5);
  }
  assert.ok(relError((await pending).data, ref) < 1e-5);
  await pendingT;
  const C = await pendingC;
  assert.ok(relError(C.values, refC) < 1e-5);
  assert.deepEqual(Array.from(C.rowPtr), Array.from(Mcopy.rowPtr));
  assert.deepEqual(Array.from(C.colIdx), Array.from(Mcopy.colIdx));
});

// ---- format ---------------------------------------------------------------------

function assertSameBsr(a: BsrParts, b: BsrParts, what: string) {
  assert.deepEqual([...a.shape], [...b.shape], `${what}: shape`);
  assert.deepEqual([...a.blockSize], [...b.blockSize], `${what}: blockSize`);
  assert.deepEqual(Array.from(a.rowPtr), Array.from(b.rowPtr), `${what}: rowPtr`);
  assert.deepEqual(Array.from(a.colIdx), Array.from(b.colIdx), `${what}: colIdx`);
  assert.deepEqual(Array.from(a.values), Array.from(b.values), `${what}: values`);
}

test('toDense / transpose match the references; fromDense(toDense(B)) = B; transpose().transpose() = B', () => {
  for (const c of weightCases(404)) {
    const W = c.W;
    assert.deepEqual(Array.from(W.toDense().data), Array.from(toDenseRef(W)), `${c.label}: toDense`);
    assert.deepEqual(W.toDense().shape, [...W.shape]);
    const T = W.transpose();
    assertSameBsr(T, transposeRef(W), `${c.label}: transpose`);
    assertSameBsr(T.transpose(), W, `${c.label}: transpose twice`);
    // random values are never all zero in a kept block, so threshold 0 keeps exactly B's blocks
    assertSameBsr(BlockSparseMatrix.fromDense(W.toDense(), { blockSize: W.blockSize }), W, `${c.label}: fromDense round trip`);
    assertSameBsr(
      BlockSparseMatrix.fromDense(W.toDense(), { blockSize: W.blockSize, density: W.density }),
      W,
      `${c.label}: fromDense by density round trip`,
    );
  }
});

test('fromDense keeps the blocks of largest L2 norm (density) or above a threshold; fromMask keeps the masked blocks', () => {
  const rng = new Rng(45);
  for (const [br, bc] of BLOCKS) {
    const shape = [br * rng.int(1, 5), bc * rng.int(1, 5)];
    const dense = rng.floats(shape[0] * shape[1]);
    // a few exactly-zero blocks and exact ties
    const nbc = shape[1] / bc;
    const norms = blockNormsRef(dense, shape, [br, bc]);
    for (const density of [0, 0.1, 0.37, 0.5, 1]) {
      const B = BlockSparseMatrix.fromDense({ data: dense, shape }, { blockSize: [br, bc], density });
      assertSameBsr(B, fromBlockMaskRef(dense, shape, [br, bc], topBlocksRef(norms, density)), `${br}×${bc} density ${density}`);
      assert.equal(B.nnzBlocks, Math.floor(density * norms.length + 0.5));
    }
    const sorted = [...norms].sort((a, b) => a - b);
    // midway between two norms, so float64 summation order cannot flip a block
    const mid = Math.floor(sorted.length / 2);
    const threshold = mid + 1 < sorted.length ? (sorted[mid] + sorted[mid + 1]) / 2 : sorted[mid] / 2;
    const Bt = BlockSparseMatrix.fromDense({ data: dense, shape }, { blockSize: [br, bc], threshold });
    assertSameBsr(Bt, fromBlockMaskRef(dense, shape, [br, bc], norms.map((v) => (v > threshold ? 1 : 0))), `${br}×${bc} threshold`);
    const mask = new Uint8Array(norms.length).map(() => (rng.next() < 0.5 ? rng.int(1, 255) : 0));
    const Bm = BlockSparseMatrix.fromMask({ data: dense, shape }, { data: mask, shape: [shape[0] / br, nbc] });
    assertSameBsr(Bm, fromBlockMaskRef(dense, shape, [br, bc], mask), `${br}×${bc} fromMask`);
  }
  // ties: equal norms → lower block index first
  const tie = BlockSparseMatrix.fromDense({ data: new Float32Array(16).fill(1), shape: [4, 4] }, { blockSize: [2, 2], density: 0.5 });
  assert.deepEqual(Array.from(tie.colIdx), [0, 1]);
  assert.deepEqual(Array.from(tie.rowPtr), [0, 2, 2]);
});

test('random(): exact block count, deterministic per seed, valid structure', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 6 }), fc.integer({ min: 1, max: 6 }), fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 5 }),
      fc.double({ min: 0, max: 1, noNaN: true }), fc.nat(),
      (nbr, nbc, br, bc, density, seed) => {
        const o = { shape: [nbr * br, nbc * bc], blockSize: [br, bc], density, seed };
        const B = BlockSparseMatrix.random(o);
        assert.equal(B.nnzBlocks, Math.floor(density * nbr * nbc + 0.5));
        assertSameBsr(BlockSparseMatrix.random(o), B, 'same seed');
        BlockSparseMatrix.fromParts(B); // validates
        assertSameBsr(B.transpose().transpose(), B, 'transpose twice');
        assert.deepEqual(Array.from(B.transpose().toDense().data), Array.from(toDenseRef(transposeRef(B))));
      },
    ),
    { numRuns: 150 },
  );
});

// ---- validation -----------------------------------------------------------------

/** An independent check of the BSR invariants (true when valid). */
function validRef(p: { shape: number[]; blockSize: number[]; rowPtr: Int32Array; colIdx: Int32Array; values: Float32Array }): boolean {
  const [rows, cols] = p.shape;
  const [br, bc] = p.blockSize;
  if (rows % br || cols % bc) return false;
  const nbr = rows / br;
  const nbc = cols / bc;
  if (p.rowPtr.length !== nbr + 1 || p.rowPtr[0] !== 0 || p.rowPtr[nbr] !== p.colIdx.length) return false;
  for (let R = 0; R < nbr; R++) {
    if (p.rowPtr[R + 1] < p.rowPtr[R]) return false;
    for (let j = p.rowPtr[R]; j < p.rowPtr[R + 1]; j++) {
      if (p.colIdx[j] < 0 || p.colIdx[j] >= nbc) return false;
      if (j > p.rowPtr[R] && p.colIdx[j] <= p.colIdx[j - 1]) return false;
    }
  }
  return p.values.length === p.colIdx.length * br * bc;
}

test('fromParts accepts exactly the valid structures (fast-check: mutated rowPtr/colIdx/values/shape)', () => {
  const arb = fc.record({
    nbr: fc.integer({ min: 1, max: 5 }),
    nbc: fc.integer({ min: 1, max: 5 }),
    br: fc.integer({ min: 1, max: 3 }),
    bc: fc.integer({ min: 1, max: 3 }),
    density: fc.double({ min: 0, max: 1, noNaN: true }),
    seed: fc.nat(),
    mutation: fc.integer({ min: 0, max: 9 }),
    at: fc.nat(),
    value: fc.integer({ min: -3, max: 8 }),
  });
  fc.assert(
    fc.property(arb, (a) => {
      const B = BlockSparseMatrix.random({ shape: [a.nbr * a.br, a.nbc * a.bc], blockSize: [a.br, a.bc], density: a.density, seed: a.seed });
      const p = { shape: [...B.shape], blockSize: [...B.blockSize], rowPtr: B.rowPtr.slice(), colIdx: B.colIdx.slice(), values: B.values.slice() };
      const pick = (n: number) => (n > 0 ? a.at % n : 0);
      switch (a.mutation) {
        case 0: if (p.rowPtr.length) p.rowPtr[pick(p.rowPtr.length)] += a.value; break;
        case 1: if (p.colIdx.length) p.colIdx[pick(p.colIdx.length)] = a.value; break;
        case 2: p.values = p.values.subarray(0, Math.max(0, p.values.length - 1 - (a.at % 3))); break;
        case 3: p.rowPtr = p.rowPtr.subarray(0, p.rowPtr.length - 1); break;
        case 4: p.colIdx = Int32Array.from([...p.colIdx, a.value]); break;
        case 5: p.shape = [p.shape[0] + (a.value % 2), p.shape[1]]; break;
        case 6: p.blockSize = [p.blockSize[0], Math.max(1, a.value)]; break;
        case 7: if (p.colIdx.length > 1) { const i = pick(p.colIdx.length - 1); [p.colIdx[i], p.colIdx[i + 1]] = [p.colIdx[i + 1], p.colIdx[i]]; } break;
        case 8: p.rowPtr = Int32Array.from([...p.rowPtr].reverse()); break;
        default: break; // unmodified
      }
      const ok = validRef(p);
      try {
        BlockSparseMatrix.fromParts(p);
      } catch (e) {
        assert.ok(e instanceof RangeError, `expected RangeError, got ${(e as Error).constructor.name}: ${(e as Error).message}`);
        assert.match((e as Error).message, /^BlockSparseMatrix\.fromParts: (shape|rowPtr|colIdx|values)/);
        assert.ok(!ok, `a valid structure was rejected: ${(e as Error).message}`);
        return;
      }
      assert.ok(ok, 'an invalid structure was accepted');
      // and every kernel runs on it without complaint
      const x = { data: new Float32Array(2 * p.shape[1]).fill(1), shape: [2, p.shape[1]] };
      bsrLinear(x, p as unknown as BlockSparseMatrix);
    }),
    { numRuns: 600 },
  );
});

const ok = () => ({
  shape: [4, 6],
  blockSize: [2, 3],
  rowPtr: new Int32Array([0, 2, 3]),
  colIdx: new Int32Array([0, 1, 1]),
  values: new Float32Array(18),
});
const edit = (f: (p: ReturnType<typeof ok>) => void) => {
  const p = ok();
  f(p);
  return p;
};

/** Malformed structures with the message that must name the field. */
const STRUCT_CASES: [string, unknown, typeof TypeError, RegExp][] = [
  ['not an object', 5, TypeError, /must be a BlockSparseMatrix/],
  ['an array', [1, 2], TypeError, /must be a BlockSparseMatrix/],
  ['shape missing', edit((p) => delete (p as Partial<typeof p>).shape), TypeError, /shape must be an array \[rows, cols\]/],
  ['shape rank 3', edit((p) => (p.shape = [4, 6, 1])), RangeError, /shape must have 2 entries/],
  ['shape fractional', edit((p) => (p.shape = [4.5, 6])), RangeError, /shape\[0\] must be an integer/],
  ['blockSize zero', edit((p) => (p.blockSize = [0, 3])), RangeError, /blockSize\[0\] must be ≥ 1/],
  ['shape not divisible', edit((p) => (p.shape = [5, 6])), RangeError, /shape \[5, 6\] is not divisible by blockSize \[2, 3\]: 5 rows is not a multiple of 2/],
  ['cols not divisible', edit((p) => (p.shape = [4, 7])), RangeError, /7 columns is not a multiple of 3/],
  ['rowPtr a Float32Array', edit((p) => ((p as { rowPtr: unknown }).rowPtr = new Float32Array([0, 2, 3]))), TypeError, /rowPtr must be a Int32Array|rowPtr must be an? Int32Array/],
  ['colIdx a plain array', edit((p) => ((p as { colIdx: unknown }).colIdx = [0, 1, 1])), TypeError, /colIdx must be an? Int32Array/],
  ['values an Int32Array', edit((p) => ((p as { values: unknown }).values = new Int32Array(18))), TypeError, /values must be an? Float32Array/],
  ['rowPtr too short', edit((p) => (p.rowPtr = new Int32Array([0, 3]))), RangeError, /rowPtr has 2 entries but .* has 2 block rows \(needs 3\)/],
  ['rowPtr not starting at 0', edit((p) => (p.rowPtr = new Int32Array([1, 2, 3]))), RangeError, /rowPtr\[0\] must be 0, got 1/],
  ['rowPtr decreasing', edit((p) => (p.rowPtr = new Int32Array([0, 4, 3]))), RangeError, /rowPtr must be non-decreasing: rowPtr\[2\] = 3 < rowPtr\[1\] = 4/],
  ['rowPtr not ending at nnz', edit((p) => (p.rowPtr = new Int32Array([0, 1, 2]))), RangeError, /rowPtr\[2\] \(the last entry\) must equal the number of blocks colIdx.length = 3, got 2/],
  ['colIdx negative', edit((p) => (p.colIdx = new Int32Array([-1, 1, 1]))), RangeError, /colIdx\[0\] = -1 is out of range/],
  ['colIdx too large', edit((p) => (p.colIdx = new Int32Array([0, 1, 2]))), RangeError, /colIdx\[2\] = 2 is out of range: block row 1 needs 0 ≤ colIdx < 2/],
  ['colIdx unsorted', edit((p) => (p.colIdx = new Int32Array([1, 0, 1]))), RangeError, /colIdx must be strictly increasing .*colIdx\[1\] = 0 follows colIdx\[0\] = 1/],
  ['colIdx duplicated', edit((p) => (p.colIdx = new Int32Array([1, 1, 1]))), RangeError, /colIdx must be strictly increasing/],
  ['values too short', edit((p) => (p.values = new Float32Array(17))), RangeError, /values has 17 elements but 3 blocks of 2×3 need 18/],
  ['values too long', edit((p) => (p.values = new Float32Array(19))), RangeError, /values has 19 elements/],
];

checkBadInputs(
  'BlockSparseMatrix.fromParts',
  STRUCT_CASES.map(([label, parts, error, message]) => ({
    label,
    call: () => BlockSparseMatrix.fromParts(parts as never),
    error,
    message: new RegExp('^BlockSparseMatrix\\.fromParts: .*' + message.source),
  })),
);
checkBadInputs('new BlockSparseMatrix', [
  { label: 'rowPtr not starting at 0', call: () => new BlockSparseMatrix(edit((p) => (p.rowPtr = new Int32Array([1, 2, 3])))), error: RangeError, message: /^BlockSparseMatrix: rowPtr\[0\] must be 0/ },
]);

/** Stands for the default (valid) argument in a bad-input case. */
const D = Symbol('default');
const X = () => ({ data: new Float32Array(2 * 6), shape: [2, 6] });
const DY = () => ({ data: new Float32Array(2 * 4), shape: [2, 4] });

function kernelBadCases(fname: string, call: (w: unknown, extra?: unknown[]) => unknown, kind: 'linear' | 'transposed' | 'sddmm'): BadCase[] {
  // A mask's values are never read, so malformed values are not an error there.
  const structCases = STRUCT_CASES.filter(([label]) => kind !== 'sddmm' || !label.startsWith('values'));
  const cases: [string, () => unknown, typeof TypeError, RegExp][] = structCases.map(([label, parts, error, message]) => [
    `W ${label}`,
    () => call(parts),
    error,
    new RegExp((kind === 'sddmm' ? 'mask' : 'W') + '.*' + message.source),
  ]);
  const lin = kind === 'linear';
  const tr = kind === 'transposed';
  if (lin || tr) {
    cases.push(
      ['x/dy missing', () => call(ok(), [undefined]), TypeError, lin ? /x must be a tensor/ : /dy must be a tensor/],
      ['x/dy wrong width', () => call(ok(), [{ data: new Float32Array(10), shape: [2, 5] }]), RangeError, lin ? /W\.shape\[1\] \(in = 6\) must equal x\.shape\[1\] \(in = 5\)/ : /W\.shape\[0\] \(out = 4\) must equal dy\.shape\[1\] \(out = 5\)/],
      ['x/dy.data Float64Array', () => call(ok(), [{ data: new Float64Array(12), shape: [2, 6] }]), TypeError, /\.data must be a Float32Array/],
      ['options a string', () => call(ok(), [D, 'fast']), TypeError, /options must be an object/],
      ['out too small', () => call(ok(), [D, { out: new Float32Array(3) }]), RangeError, /out is too small/],
      ['out Float64Array', () => call(ok(), [D, { out: new Float64Array(100) }]), TypeError, /out must be a Float32Array/],
      ['W a dense tensor', () => call({ data: new Float32Array(24), shape: [4, 6] }), TypeError, /blockSize must be an array/],
      ['W a PackedLinear', () => call(native.prepackLinear({ data: new Float32Array(24), shape: [4, 6] })), TypeError, /W\.shape must be an array/],
    );
  }
  if (lin) {
    cases.push(
      ['bias wrong length', () => call(ok(), [D, { bias: new Float32Array(3) }]), RangeError, /bias has 3 elements but W has out = 4/],
      ['bias Float64Array', () => call(ok(), [D, { bias: new Float64Array(4) }]), TypeError, /bias must be a Float32Array/],
      ['activation unknown', () => call(ok(), [D, { activation: 'tanh' }]), RangeError, /activation must be one of/],
      ['packed W for another in', () => call(native.prepackBsrLinear(edit((p) => (p.shape = [4, 9]))), []), RangeError, /W\.shape\[1\] \(in = 9\) must equal x\.shape\[1\] \(in = 6\)/],
    );
  }
  if (kind === 'sddmm') {
    cases.push(
      ['a missing', () => call(ok(), [undefined]), TypeError, /a must be a tensor/],
      ['b k ≠ a k', () => call(ok(), [D, { data: new Float32Array(12), shape: [6, 2] }]), RangeError, /b\.shape\[1\] \(k = 2\) must equal a\.shape\[1\] \(k = 3\)/],
      ['mask shape ≠ [a rows, b rows]', () => call(edit((p) => (p.shape = [4, 9])), [D, D]), RangeError, /mask\.shape \[4, 9\] must be \[a\.shape\[0\], b\.shape\[0\]\] = \[4, 6\]/],
      ['out too small', () => call(ok(), [D, D, { out: new Float32Array(17) }]), RangeError, /out is too small: values .* needs 18 floats, out has 17/],
    );
  }
  return cases.map(([label, c, error, message]) => ({ label, call: c, error, message: new RegExp(`^${fname}: .*` + message.source) }));
}

const A = () => ({ data: new Float32Array(4 * 3), shape: [4, 3] });
const Bm = () => ({ data: new Float32Array(6 * 3), shape: [6, 3] });
for (const [fname, f] of [['bsrLinear', bsrLinear], ['bsrLinearAsync', bsrLinearAsync]] as const)
  checkBadInputs(fname, kernelBadCases(fname, (w, e = []) => (f as AnyFn)(e.length === 0 || e[0] === D ? X() : e[0], w, e[1]), 'linear'));
for (const [fname, f] of [['bsrLinearTransposed', bsrLinearTransposed], ['bsrLinearTransposedAsync', bsrLinearTransposedAsync]] as const)
  checkBadInputs(fname, kernelBadCases(fname, (w, e = []) => (f as AnyFn)(e.length === 0 || e[0] === D ? DY() : e[0], w, e[1]), 'transposed'));
for (const [fname, f] of [['sddmm', native.sddmm], ['sddmmAsync', native.sddmmAsync]] as const)
  checkBadInputs(fname, kernelBadCases(fname, (w, e = []) => (f as AnyFn)(e.length === 0 || e[0] === D ? A() : e[0], e.length < 2 || e[1] === D ? Bm() : e[1], w, e[2]), 'sddmm'));
checkBadInputs('prepackBsrLinear', kernelBadCases('prepackBsrLinear', (w) => prepackBsrLinear(w as never), 'linear').slice(0, STRUCT_CASES.length).concat([
  { label: 'constructed directly', call: () => new (native as unknown as { PackedBsrLinear: new (...a: unknown[]) => unknown }).PackedBsrLinear({}), error: TypeError, message: /use prepackBsrLinear/ },
]));

checkBadInputs('BlockSparseMatrix.fromDense / fromMask / random', [
  { label: 'fromDense options missing', call: () => BlockSparseMatrix.fromDense({ data: new Float32Array(4), shape: [2, 2] }, undefined as never), error: TypeError, message: /^BlockSparseMatrix\.fromDense: options must be an object/ },
  { label: 'fromDense blockSize missing', call: () => BlockSparseMatrix.fromDense({ data: new Float32Array(4), shape: [2, 2] }, {} as never), error: TypeError, message: /^BlockSparseMatrix\.fromDense: blockSize must be an array/ },
  { label: 'fromDense not divisible', call: () => BlockSparseMatrix.fromDense({ data: new Float32Array(6), shape: [2, 3] }, { blockSize: [2, 2] }), error: RangeError, message: /^BlockSparseMatrix\.fromDense: W\.shape \[2, 3\] is not divisible by blockSize \[2, 2\]: 3 columns is not a multiple of 2/ },
  { label: 'fromDense density > 1', call: () => BlockSparseMatrix.fromDense({ data: new Float32Array(4), shape: [2, 2] }, { blockSize: [1, 1], density: 1.5 }), error: RangeError, message: /density must be in \[0, 1\]/ },
  { label: 'fromDense density NaN', call: () => BlockSparseMatrix.fromDense({ data: new Float32Array(4), shape: [2, 2] }, { blockSize: [1, 1], density: NaN }), error: RangeError, message: /density must not be NaN/ },
  { label: 'fromDense threshold a string', call: () => BlockSparseMatrix.fromDense({ data: new Float32Array(4), shape: [2, 2] }, { blockSize: [1, 1], threshold: '1' as never }), error: TypeError, message: /threshold must be a number/ },
  { label: 'fromDense both', call: () => BlockSparseMatrix.fromDense({ data: new Float32Array(4), shape: [2, 2] }, { blockSize: [1, 1], threshold: 1, density: 0.5 }), error: TypeError, message: /density or threshold, not both/ },
  { label: 'fromDense W has NaN', call: () => BlockSparseMatrix.fromDense({ data: new Float32Array([1, NaN, 0, 0]), shape: [2, 2] }, { blockSize: [1, 1], density: 0.5 }), error: RangeError, message: /W\.data\[1\] is NaN/ },
  { label: 'fromDense W rank 1', call: () => BlockSparseMatrix.fromDense({ data: new Float32Array(4), shape: [4] }, { blockSize: [1, 1] }), error: RangeError, message: /W\.shape must have 2 dimensions/ },
  { label: 'fromMask mask not Uint8Array', call: () => BlockSparseMatrix.fromMask({ data: new Float32Array(4), shape: [2, 2] }, { data: new Float32Array(1), shape: [1, 1] } as never), error: TypeError, message: /^BlockSparseMatrix\.fromMask: blockMask\.data must be a Uint8Array/ },
  { label: 'fromMask mask does not divide', call: () => BlockSparseMatrix.fromMask({ data: new Float32Array(6), shape: [2, 3] }, { data: new Uint8Array(4), shape: [2, 2] }), error: RangeError, message: /blockMask\.shape \[2, 2\] must divide W\.shape \[2, 3\]/ },
  { label: 'random not divisible', call: () => BlockSparseMatrix.random({ shape: [10, 20], blockSize: [3, 5], density: 0.5 }), error: RangeError, message: /^BlockSparseMatrix\.random: shape \[10, 20\] is not divisible by blockSize \[3, 5\]/ },
  { label: 'random density', call: () => BlockSparseMatrix.random({ shape: [10, 20], blockSize: [5, 5], density: 2 }), error: RangeError, message: /density must be a number in \[0, 1\]/ },
  { label: 'random blockSize', call: () => BlockSparseMatrix.random({ shape: [10, 20], blockSize: [0, 5], density: 0.5 }), error: RangeError, message: /blockSize must be two positive integers/ },
]);

test('raw bsr bindings survive arbitrary garbage (fast-check): only TypeError/RangeError, never a crash', () => {
  const i32 = fc.oneof(fc.int32Array({ maxLength: 8 }), fc.int32Array({ minLength: 1, maxLength: 4 }).map((a) => a.map((v) => v % 4)));
  const bsrLike = fc.record(
    {
      shape: fc.array(fc.oneof(fc.integer({ min: -2, max: 12 }), fc.double()), { maxLength: 3 }),
      blockSize: fc.array(fc.oneof(fc.integer({ min: -1, max: 4 }), fc.constant(NaN)), { maxLength: 3 }),
      rowPtr: fc.oneof(i32, fc.anything()),
      colIdx: fc.oneof(i32, fc.anything()),
      values: fc.oneof(fc.float32Array({ maxLength: 40 }), fc.anything()),
    },
    { requiredKeys: [] },
  );
  const tensorLike = fc.oneof(
    fc.anything(),
    fc.record({ data: fc.float32Array({ maxLength: 30 }), shape: fc.array(fc.integer({ min: -1, max: 8 }), { maxLength: 3 }) }),
    fc.record({ data: fc.uint8Array({ maxLength: 12 }), shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }) }),
  );
  const arg = fc.oneof(bsrLike, tensorLike);
  const opts = fc.oneof(
    fc.anything(),
    fc.record({ out: fc.oneof(fc.float32Array({ maxLength: 40 }), fc.anything()), bias: fc.oneof(fc.float32Array({ maxLength: 12 }), fc.anything()), activation: fc.string(), density: fc.double(), threshold: fc.double() }, { requiredKeys: [] }),
  );
  const names = ['bsrValidate', 'bsrToDense', 'bsrTranspose', 'bsrFromDense', 'bsrFromMask', 'prepackBsrLinear', 'bsrLinear', 'bsrLinearTransposed', 'sddmm'] as const;
  const raw = native as unknown as Record<string, AnyFn>;
  fc.assert(
    fc.property(fc.constantFrom(...names), arg, arg, arg, opts, (name, a, b, c, o) => {
      try {
        if (name === 'sddmm') raw[name](a, b, c, o);
        else if (name === 'bsrFromDense') raw[name](a, fc.sample(fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 3 }), 1)[0], o);
        else raw[name](a, b, o);
        return true;
      } catch (e) {
        return e instanceof TypeError || e instanceof RangeError;
      }
    }),
    { numRuns: 3000 },
  );
});
