/**
 * The CUDA backend against the CPU ops: every cuda.* op on random inputs, on
 * the shapes the CPU tests use, compared with the CPU op (fp32: relative
 * error ≤ 1e-5; bf16: the CPU op on the same bf16-rounded inputs, ≤ 1e-2),
 * plus the device-object plumbing (round trips, streams, dispose, errors).
 *
 * Where the backend is not available (no plugin, no driver, no GPU) every test
 * here is skipped with the exact reason info().backends.cuda gives. On a GPU
 * machine: `npm run build:cuda` (or SPARSEKIT_CUDA_PLUGIN=…) then this file;
 * bench/gpu-check.sh does both. test/cuda-plugin.test.ts also runs this file
 * against a host-memory stand-in of the plugin (the device name says so) to
 * check the bindings and the TypeScript layer on machines without a GPU.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import {
  BlockSparseMatrix,
  bsrLinear,
  combine,
  cuda,
  NMSparseMatrix,
  nmLinear,
  route,
  routingPresets,
  sddmm,
  CudaUnavailableError,
  DeviceTensor,
  expertsForward,
  groupedGatedLinear,
  groupedLinear,
  info,
  linear,
  permute,
  prepackExperts,
  prepackGatedExperts,
  type ActivationName,
  type DevicePlan,
} from '../lib/index';
import * as sk from '../lib/index';
import { relError } from './harness';
import { bf16Bits, roundBf16 } from './reference/bf16';
import { randomPlan } from './reference/experts';
import { Rng } from './reference/rng';
import { planFromIds, routeTopkRef, type TopkOptions } from './reference/route_topk';

const backend = info().backends.cuda;
const device = backend.available ? `${backend.device?.name} (sm_${backend.device?.sm})` : '';

test('cuda: backend state (info().backends.cuda)', (t) => {
  t.diagnostic(`status: ${backend.status}; ${backend.reason}`);
  if (backend.kernels) for (const line of backend.kernels.split('\n')) t.diagnostic(`kernels: ${line}`);
  assert.equal(typeof backend.reason, 'string');
  assert.ok(backend.reason.length > 0);
  assert.equal(backend.available, backend.status === 'available');
});

/** A test that needs the CUDA backend: skipped with the backend's reason where it is not available. */
function cudaTest(name: string, fn: (t: TestContext) => void | Promise<void>): void {
  test(`cuda: ${name}`, async (t) => {
    if (!backend.available) {
      t.skip(backend.reason);
      return;
    }
    const before = cuda.memoryStats().liveTensors;
    await fn(t);
    await cuda.synchronize();
    assert.equal(cuda.memoryStats().liveTensors, before, `${name}: device objects leaked (not disposed) on ${device}`);
  });
}

type T2 = { data: Float32Array; shape: number[] };
const ACTS: ActivationName[] = ['none', 'relu', 'gelu', 'gelu_tanh', 'silu'];
const F32_TOL = 1e-5;
const BF16_TOL = 1e-2;

/** Disposes everything passed, at the end of a block. */
function using<R>(objs: { dispose(): void }[], fn: () => R): R {
  try {
    return fn();
  } finally {
    for (const o of objs) o.dispose();
  }
}

function host(t: DeviceTensor): Float32Array {
  return t.toHost().data as Float32Array;
}

// ---- shapes of test/linear.test.ts ------------------------------------------------

function linearShapes(): [number, number, number][] {
  const rng = new Rng(20261128);
  const fixed: [number, number, number][] = [
    [1, 1, 1], [1, 4096, 3], [2, 17, 1], [7, 33, 31], [6, 256, 16], [13, 257, 47], [64, 300, 100],
    [300, 31, 17], [5, 1000, 3], [97, 513, 129], [241, 520, 33], [16, 64, 64], [1, 2, 300],
  ];
  const shapes = [...fixed];
  for (let i = 0; i < 6; i++) shapes.push([rng.int(1, 300), rng.int(1, 200), rng.int(1, 200)]);
  // Aligned shapes that reach the large tiles (and the sm_90a kernel on Hopper).
  shapes.push([256, 512, 384], [300, 1024, 520], [16, 1024, 640], [128, 64, 256]);
  return shapes;
}

cudaTest('toDevice / toHost round trips (f32 exact, bf16 = round-to-nearest-even, i32 exact; sync = async)', async () => {
  const rng = new Rng(1);
  const a = rng.floats(7 * 13, 3);
  a[0] = 0;
  a[1] = -0;
  a[2] = 1e-40; // subnormal
  a[3] = 3.3895314e38; // rounds to the largest finite bf16
  const f = cuda.toDevice({ data: a, shape: [7, 13] });
  const b = cuda.toDevice({ data: a, shape: [7, 13] }, { dtype: 'bf16' });
  const i32 = Int32Array.from({ length: 11 }, (_, i) => i * 7919 - 40000);
  const c = cuda.toDevice({ data: i32, shape: [11] });
  using([f, b, c], () => {
    assert.deepEqual(f.shape, [7, 13]);
    assert.equal(f.dtype, 'f32');
    assert.equal(b.dtype, 'bf16');
    assert.equal(b.bytes, 7 * 13 * 2);
    assert.deepEqual(Array.from(host(f)), Array.from(a));
    const raw = b.toHostRaw().data as Uint16Array;
    assert.deepEqual(Array.from(raw), Array.from(a, (v) => bf16Bits(v)));
    assert.deepEqual(Array.from(host(b)), Array.from(roundBf16(a)));
    assert.deepEqual(Array.from(c.toHost().data), Array.from(i32));
    // bf16 bits upload as they are
    const d = cuda.toDevice({ data: raw, shape: [7, 13] }, { dtype: 'bf16' });
    using([d], () => assert.deepEqual(Array.from(d.toHostRaw().data), Array.from(raw)));
  });
  const g = cuda.toDevice({ data: a, shape: [91] });
  const back = await g.toHostAsync();
  g.dispose();
  assert.deepEqual(Array.from(back.data), Array.from(a));
  assert.deepEqual(back.shape, [91]);
});

cudaTest(`linear f32 matches the CPU linear (rel ≤ ${F32_TOL}) on test/linear.test.ts shapes, every activation, with and without bias`, async () => {
  const rng = new Rng(31);
  for (const [i, [m, k, n]] of linearShapes().entries()) {
    const x = rng.floats(m * k);
    const W = rng.floats(n * k, 1 / Math.sqrt(k));
    const bias = i % 3 !== 1 ? rng.floats(n) : null;
    const activation = ACTS[i % ACTS.length];
    const ref = linear({ data: x, shape: [m, k] }, { data: W, shape: [n, k] }, { bias, activation }).data;
    const dx = cuda.toDevice({ data: x, shape: [m, k] });
    const dw = cuda.toDevice({ data: W, shape: [n, k] });
    const db = bias ? cuda.toDevice({ data: bias, shape: [n] }) : null;
    const y = cuda.linear(dx, dw, { bias: db, activation });
    const ya = await cuda.linearAsync(dx, dw, { bias: db, activation });
    using([dx, dw, y, ya, ...(db ? [db] : [])], () => {
      assert.deepEqual(y.shape, [m, n]);
      const got = host(y);
      const err = relError(got, ref);
      assert.ok(err <= F32_TOL, `linear f32 m=${m} k=${k} n=${n} ${activation}: rel err ${err.toExponential(3)} on ${device}`);
      assert.deepEqual(Array.from(host(ya)), Array.from(got), `m=${m} k=${k} n=${n}: async differs from sync`);
    });
  }
});

/** CPU linear on the bf16-rounded inputs: what a bf16 kernel with f32 accumulation should give. */
function bf16Ref(x: Float32Array, W: Float32Array, m: number, k: number, n: number, bias: Float32Array | null, activation: ActivationName) {
  return linear({ data: roundBf16(x), shape: [m, k] }, { data: roundBf16(W), shape: [n, k] }, { bias, activation }).data;
}

async function linearBf16Check(label: string) {
  const rng = new Rng(32);
  for (const [i, [m, k, n]] of linearShapes().entries()) {
    const x = rng.floats(m * k);
    const W = rng.floats(n * k, 1 / Math.sqrt(k));
    const bias = i % 3 !== 1 ? rng.floats(n) : null;
    const activation = ACTS[i % ACTS.length];
    const ref = bf16Ref(x, W, m, k, n, bias, activation);
    const dx = cuda.toDevice({ data: x, shape: [m, k] }, { dtype: 'bf16' });
    const dw = cuda.toDevice({ data: W, shape: [n, k] }, { dtype: 'bf16' });
    const db = bias ? cuda.toDevice({ data: bias, shape: [n] }) : null;
    const y32 = cuda.linear(dx, dw, { bias: db, activation, outDtype: 'f32' });
    const y16 = cuda.linear(dx, dw, { bias: db, activation });
    using([dx, dw, y32, y16, ...(db ? [db] : [])], () => {
      assert.equal(y16.dtype, 'bf16');
      const e32 = relError(host(y32), ref);
      const e16 = relError(host(y16), ref);
      assert.ok(e32 <= BF16_TOL, `${label} m=${m} k=${k} n=${n} ${activation} (f32 out): rel err ${e32.toExponential(3)} on ${device}`);
      assert.ok(e16 <= BF16_TOL, `${label} m=${m} k=${k} n=${n} ${activation} (bf16 out): rel err ${e16.toExponential(3)} on ${device}`);
      // f32 output from bf16 inputs carries only accumulation error: far tighter than the bound.
      assert.ok(e32 <= 1e-4, `${label} m=${m} k=${k} n=${n}: f32-out error ${e32.toExponential(3)} is more than accumulation error`);
    });
  }
}

cudaTest(`linear bf16 (tensor cores) matches the CPU linear on the same bf16 inputs (rel ≤ ${BF16_TOL}; f32 out ≤ 1e-4)`, async () => {
  await linearBf16Check('linear bf16');
});

cudaTest('linear bf16 on the mma.sync kernels with the sm_90a (wgmma) kernels switched off', async (t) => {
  if (backend.device?.sm !== 90) {
    t.skip(`the wgmma kernels only run on sm_90; this device is sm_${backend.device?.sm}, so the test above already ran the mma.sync kernels`);
    return;
  }
  cuda.setOption('wgmma', false);
  try {
    await linearBf16Check('linear bf16 (mma.sync)');
  } finally {
    cuda.setOption('wgmma', true);
  }
});

// ---- experts (plans of test/experts.test.ts) ------------------------------------------

function planCases(rng: Rng) {
  const specs: [number, number, number, { pDrop?: number; hot?: number[] }][] = [
    [1, 1, 1, {}], [1, 8, 8, {}], [13, 1, 1, {}], [37, 8, 2, { hot: [3] }], [20, 64, 6, { hot: [0, 5, 63] }],
    [50, 16, 4, { pDrop: 0.2 }], [7, 3, 3, {}], [64, 64, 8, {}], [33, 5, 1, { pDrop: 0.5, hot: [4] }],
    // Larger, aligned: several tiles per expert, the grouped kernels' big tiles (and wgmma on Hopper).
    [300, 8, 2, {}], [200, 16, 4, { hot: [2] }],
  ];
  return specs.map(([T, E, k, o]) => ({ label: `T=${T} E=${E} k=${k} ${JSON.stringify(o)}`, plan: randomPlan(rng, T, E, k, o) }));
}
const DIMS: [number, number][] = [[1, 1], [17, 5], [40, 33], [7, 64], [70, 19], [64, 128], [256, 192]];

async function groupedCheck(gated: boolean, dtype: 'f32' | 'bf16', tag = '') {
  const name = gated ? 'groupedGatedLinear' : 'groupedLinear';
  const rng = new Rng(gated ? 71 : 70);
  const acts: ActivationName[] = gated ? ['silu', 'gelu', 'gelu_tanh', 'relu'] : ['none', 'relu', 'silu', 'gelu'];
  for (const [i, { label, plan }] of planCases(rng).entries()) {
    const rows = plan.sortedSlots.length;
    if (rows === 0) continue;
    const [k, n] = i >= 9 ? DIMS[5 + (i % 2)] : DIMS[i % 5];
    const E = plan.experts;
    const round = dtype === 'bf16' ? roundBf16 : (a: Float32Array) => a;
    const xs = rng.floats(rows * k);
    const W = rng.floats(E * n * k, 1 / Math.sqrt(k));
    const W3 = gated ? rng.floats(E * n * k, 1 / Math.sqrt(k)) : null;
    const bias = !gated && i % 2 === 0 ? rng.floats(E * n) : null;
    const act = acts[i % acts.length];
    const ref = gated
      ? groupedGatedLinear({ data: round(xs), shape: [rows, k] }, plan.expertOffsets,
          prepackGatedExperts({ data: round(W), shape: [E, n, k] }, { data: round(W3!), shape: [E, n, k] }), { activation: act }).data
      : groupedLinear({ data: round(xs), shape: [rows, k] }, plan.expertOffsets,
          prepackExperts({ data: round(W), shape: [E, n, k] }, { bias: bias ? { data: bias, shape: [E, n] } : null }), { activation: act }).data;
    const dxs = cuda.toDevice({ data: xs, shape: [rows, k] }, { dtype });
    const dw = cuda.toDevice({ data: W, shape: [E, n, k] }, { dtype });
    const dw3 = W3 ? cuda.toDevice({ data: W3, shape: [E, n, k] }, { dtype }) : null;
    const db = bias ? cuda.toDevice({ data: bias, shape: [E, n] }) : null;
    const dp = cuda.toDevicePlan(plan);
    const y = gated
      ? cuda.groupedGatedLinear(dxs, dp, dw, dw3!, { activation: act, outDtype: 'f32' })
      : cuda.groupedLinear(dxs, dp, dw, { bias: db, activation: act, outDtype: 'f32' });
    const ya = gated
      ? await cuda.groupedGatedLinearAsync(dxs, dp, dw, dw3!, { activation: act, outDtype: 'f32' })
      : await cuda.groupedLinearAsync(dxs, dp, dw, { bias: db, activation: act, outDtype: 'f32' });
    using([dxs, dw, dp, y, ya, ...(dw3 ? [dw3] : []), ...(db ? [db] : [])], () => {
      const got = host(y);
      const err = relError(got, ref);
      const tol = dtype === 'f32' ? F32_TOL : BF16_TOL;
      assert.ok(err <= tol, `${name}${tag} ${dtype} ${label} in=${k} out=${n} ${act}: rel err ${err.toExponential(3)} on ${device}`);
      assert.deepEqual(Array.from(host(ya)), Array.from(got), `${label}: async differs from sync`);
    });
  }
}

for (const gated of [false, true]) {
  for (const dtype of ['f32', 'bf16'] as const) {
    const name = gated ? 'groupedGatedLinear' : 'groupedLinear';
    cudaTest(`${name} ${dtype} matches the CPU ${name} on test/experts.test.ts plans`, () => groupedCheck(gated, dtype));
  }
}

/** linear / grouped / gated grouped bf16 with one of the plugin's sm_90a switches flipped (Hopper only). */
function sm90VariantTest(title: string, option: 'epilogue' | 'tma', value: boolean, tag: string) {
  cudaTest(title, async (t) => {
    if (backend.device?.sm !== 90) {
      t.skip(`the sm_90a kernels only run on sm_90; this device is sm_${backend.device?.sm}`);
      return;
    }
    cuda.setOption(option, value);
    try {
      await linearBf16Check(`linear bf16 (${tag})`);
      await groupedCheck(false, 'bf16', ` (${tag})`);
      await groupedCheck(true, 'bf16', ` (${tag})`);
    } finally {
      cuda.setOption(option, !value);
    }
  });
}
sm90VariantTest('linear and grouped bf16 on the TMA kernels with the epilogue specialised per output type / activation / bias (epilogue on)', 'epilogue', true, 'specialised epilogue');
sm90VariantTest('linear and grouped bf16 on the sm_90a kernels fed by cp.async instead of TMA (tma off)', 'tma', false, 'cp.async wgmma');

cudaTest('permute and combine match the CPU ops (permute exact; combine rel ≤ 1e-6), f32 and bf16', async () => {
  const rng = new Rng(72);
  for (const { label, plan } of planCases(rng)) {
    if (plan.sortedSlots.length === 0) continue;
    const d = rng.pick([1, 3, 8, 64, 200]);
    const T = plan.tokens;
    const x = rng.floats(T * d);
    const ys = rng.floats(plan.sortedSlots.length * d);
    const cpuPlan = { sortedSlots: plan.sortedSlots, expertOffsets: plan.expertOffsets, weights: plan.weights, k: plan.k };
    const refX = permute({ data: x, shape: [T, d] }, cpuPlan).data;
    const refY = combine({ data: ys, shape: [plan.sortedSlots.length, d] }, cpuPlan).data;
    const dp = cuda.toDevicePlan(cpuPlan);
    for (const dtype of ['f32', 'bf16'] as const) {
      const round = dtype === 'bf16' ? roundBf16 : (a: Float32Array) => a;
      const dx = cuda.toDevice({ data: x, shape: [T, d] }, { dtype });
      const dys = cuda.toDevice({ data: ys, shape: [plan.sortedSlots.length, d] }, { dtype });
      const px = cuda.permute(dx, dp);
      const cy = await cuda.combineAsync(dys, dp, { outDtype: 'f32' });
      using([dx, dys, px, cy], () => {
        assert.deepEqual(Array.from(host(px)), Array.from(round(refX)), `permute ${dtype} ${label} d=${d}`);
        const refYd = dtype === 'f32' ? refY : combine({ data: roundBf16(ys), shape: [plan.sortedSlots.length, d] }, cpuPlan).data;
        const err = relError(host(cy), refYd);
        assert.ok(err <= 1e-6, `combine ${dtype} ${label} d=${d}: rel err ${err.toExponential(3)}`);
      });
    }
    const hp = dp.toHost();
    assert.deepEqual(Array.from(hp.sortedSlots), Array.from(plan.sortedSlots));
    assert.deepEqual(Array.from(hp.expertOffsets), Array.from(plan.expertOffsets));
    assert.deepEqual(Array.from(hp.weights), Array.from(plan.weights));
    dp.dispose();
  }
});

cudaTest('expertsForward matches the CPU expertsForward (f32 ≤ 1e-5, bf16 ≤ 1e-2)', async () => {
  const rng = new Rng(73);
  for (const [T, E, k, d, ffn] of [[13, 4, 2, 16, 24], [64, 8, 2, 64, 96], [40, 16, 4, 32, 40], [1, 3, 3, 8, 8]]) {
    const plan = randomPlan(rng, T, E, k, { pDrop: 0.1 });
    if (plan.sortedSlots.length === 0) continue;
    const x = rng.floats(T * d);
    const gate = rng.floats(E * ffn * d, 1 / Math.sqrt(d));
    const up = rng.floats(E * ffn * d, 1 / Math.sqrt(d));
    const down = rng.floats(E * d * ffn, 1 / Math.sqrt(ffn));
    const cpuPlan = { sortedSlots: plan.sortedSlots, expertOffsets: plan.expertOffsets, weights: plan.weights, k };
    for (const dtype of ['f32', 'bf16'] as const) {
      const round = dtype === 'bf16' ? roundBf16 : (a: Float32Array) => a;
      const ref = expertsForward({ data: round(x), shape: [T, d] }, cpuPlan,
        prepackGatedExperts({ data: round(gate), shape: [E, ffn, d] }, { data: round(up), shape: [E, ffn, d] }),
        prepackExperts({ data: round(down), shape: [E, d, ffn] })).data;
      const dx = cuda.toDevice({ data: x, shape: [T, d] }, { dtype });
      const ex = {
        gate: cuda.toDevice({ data: gate, shape: [E, ffn, d] }, { dtype }),
        up: cuda.toDevice({ data: up, shape: [E, ffn, d] }, { dtype }),
        down: cuda.toDevice({ data: down, shape: [E, d, ffn] }, { dtype }),
      };
      const dp = cuda.toDevicePlan(cpuPlan);
      const y = await cuda.expertsForwardAsync(dx, dp, ex, { outDtype: 'f32' });
      using([dx, ex.gate, ex.up, ex.down, dp, y], () => {
        const err = relError(host(y), ref);
        const tol = dtype === 'f32' ? F32_TOL : BF16_TOL;
        assert.ok(err <= tol, `expertsForward ${dtype} T=${T} E=${E} k=${k} d=${d} ffn=${ffn}: rel err ${err.toExponential(3)} on ${device}`);
      });
    }
  }
});

// ---- block-sparse ------------------------------------------------------------------------

interface HostBsr {
  shape: [number, number];
  blockSize: [number, number];
  rowPtr: Int32Array;
  colIdx: Int32Array;
  values: Float32Array;
}

/** Random BSR with some empty and some full block rows. */
function randomBsr(rng: Rng, rows: number, cols: number, br: number, bc: number, density: number): HostBsr {
  const nbr = rows / br, nbc = cols / bc;
  const rowPtr = new Int32Array(nbr + 1);
  const colIdx: number[] = [];
  for (let r = 0; r < nbr; r++) {
    const mode = r % 5;
    for (let c = 0; c < nbc; c++) {
      const keep = mode === 0 ? false : mode === 1 ? true : rng.next() < density;
      if (keep) colIdx.push(c);
    }
    rowPtr[r + 1] = colIdx.length;
  }
  return { shape: [rows, cols], blockSize: [br, bc], rowPtr, colIdx: Int32Array.from(colIdx), values: rng.floats(colIdx.length * br * bc) };
}

function bsrToDense(b: HostBsr): Float32Array {
  const [rows, cols] = b.shape, [br, bc] = b.blockSize;
  const out = new Float32Array(rows * cols);
  for (let R = 0; R < rows / br; R++)
    for (let p = b.rowPtr[R]; p < b.rowPtr[R + 1]; p++)
      for (let i = 0; i < br; i++)
        for (let j = 0; j < bc; j++) out[(R * br + i) * cols + b.colIdx[p] * bc + j] = b.values[(p * br + i) * bc + j];
  return out;
}

const BSR_CASES: [number, number, number, number, number, number][] = [
  // m, rows (out), cols (in), br, bc, density
  [1, 64, 64, 16, 16, 0.5], [37, 128, 96, 16, 16, 0.3], [130, 256, 128, 32, 32, 0.25], [7, 64, 192, 32, 32, 0.1],
  [200, 256, 256, 64, 64, 0.5], [16, 128, 64, 64, 64, 1], [20, 15, 20, 3, 5, 0.4], [9, 32, 32, 16, 16, 0],
];

for (const dtype of ['f32', 'bf16'] as const) {
  cudaTest(`bsrLinear ${dtype} (blocks 16/32/64 and 3×5) matches the CPU bsrLinear`, async () => {
    const rng = new Rng(dtype === 'f32' ? 80 : 81);
    for (const [i, [m, rows, cols, br, bc, density]] of BSR_CASES.entries()) {
      const b = randomBsr(rng, rows, cols, br, bc, density);
      const x = rng.floats(m * cols);
      const bias = i % 2 ? rng.floats(rows) : null;
      const act = ACTS[i % ACTS.length];
      const round = dtype === 'bf16' ? roundBf16 : (a: Float32Array) => a;
      // The CPU bsrLinear on the same (rounded) inputs; and the dense product as a second opinion.
      const ref = bsrLinear({ data: round(x), shape: [m, cols] }, BlockSparseMatrix.fromParts({ ...b, values: round(b.values) }), { bias, activation: act }).data;
      const dense = linear({ data: round(x), shape: [m, cols] }, { data: round(bsrToDense(b)), shape: [rows, cols] }, { bias, activation: act }).data;
      assert.ok(relError(ref, dense) <= 1e-5, 'CPU bsrLinear agrees with the dense product');
      const dx = cuda.toDevice({ data: x, shape: [m, cols] }, { dtype });
      const dw = cuda.toDeviceBsr(BlockSparseMatrix.fromParts(b), { dtype });
      const db = bias ? cuda.toDevice({ data: bias, shape: [rows] }) : null;
      const y = await cuda.bsrLinearAsync(dx, dw, { bias: db, activation: act, outDtype: 'f32' });
      using([dx, dw, y, ...(db ? [db] : [])], () => {
        assert.deepEqual(dw.shape, [rows, cols]);
        assert.equal(dw.nnzBlocks, b.colIdx.length);
        const err = relError(host(y), ref);
        const tol = dtype === 'f32' ? F32_TOL : BF16_TOL;
        assert.ok(err <= tol, `bsrLinear ${dtype} m=${m} W=${rows}x${cols} block ${br}x${bc} d=${density}: rel err ${err.toExponential(3)} on ${device}`);
      });
    }
  });

  cudaTest(`sddmm ${dtype} matches the CPU sddmm`, async () => {
    const rng = new Rng(dtype === 'f32' ? 82 : 83);
    for (const [m, n, k, bs, density] of [[64, 64, 40, 16, 0.5], [128, 96, 64, 32, 0.3], [128, 128, 72, 64, 0.5], [15, 20, 9, 5, 0.5], [32, 32, 13, 16, 1]] as const) {
      const mask = randomBsr(rng, m, n, bs, bs, density);
      const a = rng.floats(m * k);
      const b = rng.floats(n * k);
      const round = dtype === 'bf16' ? roundBf16 : (v: Float32Array) => v;
      const full = linear({ data: round(a), shape: [m, k] }, { data: round(b), shape: [n, k] }).data;
      const blocks = new Float32Array(mask.colIdx.length * bs * bs);
      for (let R = 0; R < m / bs; R++)
        for (let p = mask.rowPtr[R]; p < mask.rowPtr[R + 1]; p++)
          for (let i = 0; i < bs; i++)
            for (let j = 0; j < bs; j++) blocks[(p * bs + i) * bs + j] = full[(R * bs + i) * n + mask.colIdx[p] * bs + j];
      // The CPU sddmm, checked against the blocks of the dense product.
      const ref = sddmm({ data: round(a), shape: [m, k] }, { data: round(b), shape: [n, k] }, BlockSparseMatrix.fromParts(mask)).values;
      if (ref.length) assert.ok(relError(ref, blocks) <= 1e-5, 'CPU sddmm agrees with the dense product');
      const dm = cuda.toDeviceBsr(mask, { dtype });
      const da = cuda.toDevice({ data: a, shape: [m, k] }, { dtype });
      const db = cuda.toDevice({ data: b, shape: [n, k] }, { dtype });
      const out = cuda.sddmm(da, db, dm, { outDtype: 'f32' });
      using([dm, da, db, out], () => {
        assert.equal(out.nnzBlocks, mask.colIdx.length);
        if (ref.length === 0) return;
        const err = relError(out.valuesToHost().data, ref);
        const tol = dtype === 'f32' ? F32_TOL : BF16_TOL;
        assert.ok(err <= tol, `sddmm ${dtype} ${m}x${n}x${k} block ${bs} d=${density}: rel err ${err.toExponential(3)} on ${device}`);
      });
    }
  });
}

// ---- N:M -----------------------------------------------------------------------------------

/** A dense [rows, cols] matrix with at most n nonzeros in every group of m (some groups with fewer). */
function randomNM(rng: Rng, rows: number, cols: number, n: number, m: number): Float32Array {
  const w = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let g = 0; g < cols / m; g++) {
      const keep = rng.next() < 0.1 ? rng.int(0, n) : n;
      const pos = [...Array(m).keys()].sort(() => rng.next() - 0.5).slice(0, keep);
      for (const p of pos) w[r * cols + g * m + p] = rng.next() * 2 - 1;
    }
  return w;
}

/**
 * The CUTLASS / PyTorch reordered metadata, computed by PyTorch's gather
 * formulation (torch/sparse/_semi_structured_conversions.py,
 * _sparse_semi_structured_from_dense_cutlass for int16 metadata): position j
 * of the reordered array holds meta[off(j)] of the row-major [rows, cols/16]
 * metadata. The binding packs with the scatter formulation (CUTLASS's
 * reorder_meta); the two must agree.
 */
function cutlassGatherOffsets(rows: number, cols: number): Int32Array {
  const mc = cols / 16;
  const n = rows * mc;
  const magic4 = [0, cols / 2, 1, cols / 2 + 1, cols, (3 * cols) / 2, cols + 1, (3 * cols) / 2 + 1];
  const off = new Int32Array(n);
  for (let j = 0; j < n; j++) {
    const tmp1 = 2 * Math.floor(j / (2 * rows));
    const tmp2 = Math.floor((j % 64) / 8) * mc;
    const tmp3 = (Math.floor(j / 64) % (rows / 32)) * 2 * cols;
    off[j] = tmp1 + tmp2 + tmp3 + magic4[j % 8];
  }
  return off;
}

test('cuda.packCutlass24 (host, no GPU): values and metadata in the CUTLASS / PyTorch semi-structured layout', () => {
  const rng = new Rng(92);
  for (const [rows, cols] of [[32, 64], [64, 128], [96, 192]]) {
    // Exactly two nonzeros per group of four.
    const w = new Float32Array(rows * cols);
    const pairs: [number, number][] = [];
    for (let g = 0; g < (rows * cols) / 4; g++) {
      const a = rng.int(0, 3);
      let b = rng.int(0, 2);
      if (b >= a) b++;
      const [i0, i1] = a < b ? [a, b] : [b, a];
      pairs.push([i0, i1]);
      w[g * 4 + i0] = bf16Round(rng.next() + 0.5);
      w[g * 4 + i1] = -bf16Round(rng.next() + 0.5);
    }
    const { values, meta: meta16 } = cuda.packCutlass24({ data: w, shape: [rows, cols] });
    const meta = new Uint16Array(meta16.buffer, meta16.byteOffset, meta16.length);
    // values: the two kept values of each group, in column order, as bf16 bits.
    for (let g = 0; g < pairs.length; g++) {
      assert.equal(values[2 * g], bf16Bits(w[g * 4 + pairs[g][0]]));
      assert.equal(values[2 * g + 1], bf16Bits(w[g * 4 + pairs[g][1]]));
    }
    // metadata: per 16 columns of a row, four 4-bit groups (first index in the low 2 bits), reordered.
    const plain = new Uint16Array(rows * (cols / 16));
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < cols / 16; c++) {
        let word = 0;
        for (let q = 0; q < 4; q++) {
          const [i0, i1] = pairs[(r * cols) / 4 + c * 4 + q];
          word |= (i0 | (i1 << 2)) << (4 * q);
        }
        plain[r * (cols / 16) + c] = word;
      }
    const off = cutlassGatherOffsets(rows, cols);
    const want = Array.from(off, (o) => plain[o]);
    assert.deepEqual(Array.from(meta), want, `CUTLASS metadata order for ${rows}x${cols}`);
    // The N:M family's export of the same matrix is the same bits.
    const c = NMSparseMatrix.fromMask({ data: w, shape: [rows, cols] }, { data: Float32Array.from(w, (v) => (v !== 0 ? 1 : 0)), shape: [rows, cols] }, { n: 2, m: 4 }).toCutlass24('bfloat16');
    assert.deepEqual(Array.from(c.values), Array.from(values), 'values = NMSparseMatrix.toCutlass24(bfloat16).values');
    assert.deepEqual(Array.from(c.meta), Array.from(meta16), 'meta = NMSparseMatrix.toCutlass24(bfloat16).meta');
  }
  // Hand-worked: in the first 128 bytes, 32-bit word 4g+q (lane 4g+q of mma.sp.m16n8k32) holds
  // rows (g, g+8) for q = 0/1 (columns 0–15 / 16–31) and rows (g+16, g+24) for q = 2/3.
  const rows = 32, cols = 64;
  const w = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let g = 0; g < cols / 4; g++) {
      // group g of row r keeps positions (0, 1 + (r + g) % 3): a pattern that tells rows and groups apart
      w[r * cols + g * 4] = 1;
      w[r * cols + g * 4 + 1 + ((r + g) % 3)] = 1;
    }
  const packed = cuda.packCutlass24({ data: w, shape: [rows, cols] }).meta;
  const meta = new Uint16Array(packed.buffer, packed.byteOffset, packed.length);
  const word = (r: number, c: number) => {
    let v = 0;
    for (let q = 0; q < 4; q++) v |= (0 | ((1 + ((r + c * 4 + q) % 3)) << 2)) << (4 * q);
    return v;
  };
  for (let g = 0; g < 8; g++) {
    assert.equal(meta[2 * (4 * g) + 0], word(g, 0), `lane ${4 * g} low half: row ${g}, columns 0–15`);
    assert.equal(meta[2 * (4 * g) + 1], word(g + 8, 0), `lane ${4 * g} high half: row ${g + 8}`);
    assert.equal(meta[2 * (4 * g + 1)], word(g, 1), `lane ${4 * g + 1}: row ${g}, columns 16–31`);
    assert.equal(meta[2 * (4 * g + 2) + 1], word(g + 24, 0), `lane ${4 * g + 2} high half: row ${g + 24}`);
    assert.equal(meta[2 * (4 * g + 3)], word(g + 16, 1), `lane ${4 * g + 3} low half: row ${g + 16}, columns 16–31`);
  }
  // The next 32 columns of the same rows follow all rows' first 32 columns (column-major by 32-column slices).
  assert.equal(meta[2 * rows], word(0, 2));
  assert.throws(() => cuda.packCutlass24({ data: new Float32Array(32 * 64).fill(1), shape: [32, 64] }), /W is not 2:4 sparse: .*row 0/);
  assert.throws(() => cuda.packCutlass24({ data: new Float32Array(16 * 64), shape: [16, 64] }), /rows % 32 == 0/);
});

function bf16Round(x: number): number {
  return roundBf16(Float32Array.of(x))[0];
}

cudaTest('nmLinear 2:4 bf16 on sparse tensor cores (CUTLASS layout) matches the CPU linear on the dense matrix', async () => {
  const rng = new Rng(90);
  for (const [i, [m, n, k]] of ([[1, 32, 64], [16, 64, 128], [37, 96, 192], [130, 128, 256], [300, 256, 512]] as const).entries()) {
    const W = randomNM(rng, n, k, 2, 4);
    const x = rng.floats(m * k);
    const bias = i % 2 ? rng.floats(n) : null;
    const act = ACTS[i % ACTS.length];
    const ref = bf16Ref(x, W, m, k, n, bias, act);
    const dx = cuda.toDevice({ data: x, shape: [m, k] }, { dtype: 'bf16' });
    const dw = cuda.toDeviceNM({ data: W, shape: [n, k] }, { n: 2, m: 4, dtype: 'bf16' });
    const db = bias ? cuda.toDevice({ data: bias, shape: [n] }) : null;
    // The same matrix uploaded from its CUTLASS packing (as PyTorch / toCutlass24 would give it).
    const dw24 = cuda.toDeviceNM24({ ...cuda.packCutlass24({ data: W, shape: [n, k] }), shape: [n, k] });
    const y = cuda.nmLinear(dx, dw, { bias: db, activation: act, outDtype: 'f32' });
    const y24 = await cuda.nmLinearAsync(dx, dw24, { bias: db, activation: act, outDtype: 'f32' });
    using([dx, dw, dw24, y, y24, ...(db ? [db] : [])], () => {
      assert.equal(dw.layout, 'cutlass-2:4');
      const err = relError(host(y), ref);
      assert.ok(err <= BF16_TOL, `nmLinear 2:4 m=${m} n=${n} k=${k}: rel err ${err.toExponential(3)} on ${device}`);
      assert.ok(err <= 1e-4, `nmLinear 2:4 m=${m} n=${n} k=${k}: f32-out error ${err.toExponential(3)} is more than accumulation error`);
      assert.deepEqual(Array.from(host(y24)), Array.from(host(y)), 'toDeviceNM24(packCutlass24(W)) differs from toDeviceNM(W)');
    });
  }
});

cudaTest('nmLinear on NMSparseMatrix weights (2:4 tensor cores, 1:4, 2:8; f32 and bf16) matches the CPU nmLinear', async () => {
  const rng = new Rng(93);
  const cases: [number, number, number, number, number, 'f32' | 'bf16'][] = [
    [37, 96, 192, 2, 4, 'bf16'], [300, 128, 256, 2, 4, 'bf16'], [16, 64, 128, 2, 4, 'f32'], [13, 40, 64, 1, 4, 'bf16'], [7, 33, 80, 2, 8, 'f32'],
  ];
  for (const [i, [m, rows, cols, n, mm, dtype]] of cases.entries()) {
    const W = NMSparseMatrix.random(rows, cols, { n, m: mm }, { seed: 10 + i, scale: 0.2 });
    const x = rng.floats(m * cols);
    const round = dtype === 'bf16' ? roundBf16 : (a: Float32Array) => a;
    const Wr = NMSparseMatrix.fromParts({ rows, cols, n, m: mm, values: round(W.values), indices: W.indices });
    const bias = i % 2 ? rng.floats(rows) : null;
    const ref = nmLinear({ data: round(x), shape: [m, cols] }, Wr, { bias, activation: 'silu' }).data;
    const dx = cuda.toDevice({ data: x, shape: [m, cols] }, { dtype });
    const dw = cuda.toDeviceNM(W, { dtype });
    const db = bias ? cuda.toDevice({ data: bias, shape: [rows] }) : null;
    const y = cuda.nmLinear(dx, dw, { bias: db, activation: 'silu', outDtype: 'f32' });
    const extra: { dispose(): void }[] = [];
    if (dw.layout === 'cutlass-2:4') {
      // Its PyTorch / CUTLASS export uploads to the same thing.
      const d24 = cuda.toDeviceNM24(W.toCutlass24('bfloat16'));
      const y24 = cuda.nmLinear(dx, d24, { bias: db, activation: 'silu', outDtype: 'f32' });
      extra.push(d24, y24);
      assert.deepEqual(Array.from(host(y24)), Array.from(host(y)), `${n}:${mm} toDeviceNM24(W.toCutlass24()) differs from toDeviceNM(W)`);
    }
    using([dx, dw, y, ...extra, ...(db ? [db] : [])], () => {
      assert.equal(dw.layout, n === 2 && mm === 4 && dtype === 'bf16' ? 'cutlass-2:4' : 'values+indices');
      const err = relError(host(y), ref);
      const tol = dtype === 'f32' ? F32_TOL : BF16_TOL;
      assert.ok(err <= tol, `nmLinear ${n}:${mm} ${dtype} m=${m} ${rows}x${cols}: rel err ${err.toExponential(3)} vs the CPU nmLinear on ${device}`);
    });
  }
  assert.throws(() => cuda.toDeviceNM24({ ...NMSparseMatrix.random(32, 64, { n: 2, m: 4 }).toCutlass24('float16') }), /W\.dtype must be 'bfloat16'/);
});

cudaTest('nmLinear general N:M (1:4, 2:8, 4:8, 3:5, 2:4 f32) matches the CPU linear on the dense matrix', async () => {
  const rng = new Rng(91);
  const cases: [number, number, number, number, number, 'f32' | 'bf16'][] = [
    [13, 40, 64, 1, 4, 'f32'], [7, 33, 80, 2, 8, 'bf16'], [64, 64, 128, 4, 8, 'f32'], [5, 9, 35, 3, 5, 'f32'], [20, 64, 128, 2, 4, 'f32'],
  ];
  for (const [m, n, k, nn, mm, dtype] of cases) {
    const W = randomNM(rng, n, k, nn, mm);
    const x = rng.floats(m * k);
    const ref = dtype === 'bf16' ? bf16Ref(x, W, m, k, n, null, 'none') : linear({ data: x, shape: [m, k] }, { data: W, shape: [n, k] }).data;
    const dx = cuda.toDevice({ data: x, shape: [m, k] }, { dtype });
    const dw = cuda.toDeviceNM({ data: W, shape: [n, k] }, { n: nn, m: mm, dtype });
    const y = cuda.nmLinear(dx, dw, { outDtype: 'f32' });
    using([dx, dw, y], () => {
      assert.equal(dw.layout, 'values+indices');
      const err = relError(host(y), ref);
      const tol = dtype === 'f32' ? F32_TOL : BF16_TOL;
      assert.ok(err <= tol, `nmLinear ${nn}:${mm} ${dtype} m=${m} n=${n} k=${k}: rel err ${err.toExponential(3)} on ${device}`);
    });
  }
});

// ---- routing --------------------------------------------------------------------------------

const ROUTE_CASES: { label: string; T: number; E: number; o: TopkOptions }[] = [
  { label: 'switch top-1', T: 37, E: 8, o: { k: 1 } },
  { label: 'mixtral top-2 (softmax after top-k)', T: 64, E: 8, o: { k: 2, scoreBeforeTopK: false } },
  { label: 'qwen top-4 renormalised', T: 50, E: 60, o: { k: 4, renormalize: true } },
  { label: 'sigmoid + bias', T: 33, E: 64, o: { k: 6, score: 'sigmoid', selectionBias: null } },
  { label: 'deepseek-v3 (sigmoid, bias, 8 groups top-4 sum-top2, renorm, ×2.5)', T: 300, E: 256, o: { k: 8, score: 'sigmoid', groups: 8, topkGroups: 4, groupScore: 'sum-top2', renormalize: true, scalingFactor: 2.5 } },
  { label: 'deepseek-v2 (softmax, group max)', T: 40, E: 160, o: { k: 6, groups: 8, topkGroups: 3, groupScore: 'max' } },
  { label: 'no score, T=1', T: 1, E: 16, o: { k: 3, score: 'none' } },
  { label: 'k = E', T: 9, E: 5, o: { k: 5, renormalize: true } },
];

/** Checks a GPU plan against the reference: ids equal except where the reference itself has a near-tie. */
function checkRoute(label: string, logits: Float32Array, T: number, E: number, o: TopkOptions, h: sk.HostPlan) {
  const ref = routeTopkRef(logits, T, E, o);
  const k = o.k;
  assert.ok(h.expertIds && h.tokensPerExpert, `${label}: a route plan carries expertIds and tokensPerExpert`);
  const ids = h.expertIds!;
  let nearTies = 0;
  for (let t = 0; t < T; t++)
    for (let j = 0; j < k; j++) {
      const a = ids[t * k + j], b = ref.expertIds[t * k + j];
      if (a === b) continue;
      const va = ref.selection[t * E + a], vb = ref.selection[t * E + b];
      assert.ok(Math.abs(va - vb) <= 1e-6 * Math.max(1, Math.abs(vb)),
        `${label}: token ${t} slot ${j}: expert ${a} (selection ${va}) instead of ${b} (${vb}) on ${device}`);
      nearTies++;
    }
  assert.ok(nearTies <= T * k * 0.01, `${label}: ${nearTies} near-tie differences`);
  // Weights of the experts the GPU chose, against the reference formula for them.
  const want = routeTopkRef(logits, T, E, o).weights;
  if (nearTies === 0) {
    const err = relError(h.weights, want);
    assert.ok(err <= F32_TOL, `${label}: weights rel err ${err.toExponential(3)}`);
  }
  // The plan is exactly the stable sort of the GPU's own ids.
  const p = planFromIds(ids, E);
  assert.deepEqual(Array.from(h.tokensPerExpert!), Array.from(p.tokensPerExpert), `${label}: tokensPerExpert`);
  assert.deepEqual(Array.from(h.expertOffsets), Array.from(p.expertOffsets), `${label}: expertOffsets`);
  assert.deepEqual(Array.from(h.sortedSlots), Array.from(p.sortedSlots), `${label}: sortedSlots (stable by slot)`);
}

cudaTest('route matches the float64 top-k reference (ids, weights) and its plan is the stable sort of its ids', async () => {
  const rng = new Rng(100);
  for (const c of ROUTE_CASES) {
    const logits = Float32Array.from({ length: c.T * c.E }, () => rng.normal() * 2);
    const o = { ...c.o };
    if ('selectionBias' in o) o.selectionBias = Float32Array.from({ length: c.E }, () => rng.normal() * 0.1);
    if (c.label.startsWith('deepseek-v3')) o.selectionBias = Float32Array.from({ length: c.E }, () => rng.normal() * 0.05);
    const dl = cuda.toDevice({ data: logits, shape: [c.T, c.E] });
    const plan: DevicePlan = cuda.route(dl, { ...o, selectionBias: o.selectionBias ?? undefined } as sk.CudaRouteOptions);
    const planA = await cuda.routeAsync(dl, { ...o, selectionBias: o.selectionBias ?? undefined } as sk.CudaRouteOptions);
    const h = plan.toHost();
    const ha = await planA.toHostAsync();
    using([dl, plan, planA], () => {
      assert.equal(plan.rows, c.T * c.o.k);
      checkRoute(`route ${c.label}`, logits, c.T, c.E, o, h);
      assert.deepEqual(Array.from(ha.expertIds!), Array.from(h.expertIds!), `${c.label}: async differs from sync`);
    });
    checkAgainstCpuRoute(`route ${c.label}`, logits, c.T, c.E, o, h);
  }
});

/**
 * GPU plan vs the CPU route() on the same logits: the same experts in the same
 * order (except where the reference shows a near-tie that float32 rounding may
 * order either way), then the same weights and the same plan arrays.
 */
function checkAgainstCpuRoute(label: string, logits: Float32Array, T: number, E: number, o: TopkOptions, h: sk.HostPlan) {
  const cp = route({ data: logits, shape: [T, E] }, { ...o, selectionBias: o.selectionBias ?? undefined });
  const ref = routeTopkRef(logits, T, E, o);
  const k = o.k;
  let same = true;
  for (let i = 0; i < T * k; i++) {
    if (cp.expertIds[i] === h.expertIds![i]) continue;
    same = false;
    const t = Math.floor(i / k);
    const va = ref.selection[t * E + h.expertIds![i]], vb = ref.selection[t * E + cp.expertIds[i]];
    assert.ok(Math.abs(va - vb) <= 1e-6 * Math.max(1, Math.abs(vb)), `${label}: slot ${i}: GPU expert ${h.expertIds![i]}, CPU route() ${cp.expertIds[i]} on ${device}`);
  }
  if (!same) return;
  const err = relError(h.weights, cp.weights);
  assert.ok(err <= F32_TOL, `${label}: weights vs CPU route(): rel err ${err.toExponential(3)}`);
  assert.deepEqual(Array.from(h.tokensPerExpert!), Array.from(cp.tokensPerExpert), `${label}: tokensPerExpert vs CPU route()`);
  assert.deepEqual(Array.from(h.expertOffsets), Array.from(cp.expertOffsets), `${label}: expertOffsets vs CPU route()`);
  assert.deepEqual(Array.from(h.sortedSlots), Array.from(cp.sortedSlots), `${label}: sortedSlots vs CPU route()`);
}

cudaTest('route with the dropless top-k presets of route() (training losses dropped) matches the CPU route()', async () => {
  const rng = new Rng(102);
  for (const name of ['mixtral', 'qwen2-moe', 'qwen3-moe', 'deepseek-v2', 'deepseek-v3'] as const) {
    const E = name.startsWith('deepseek') ? 64 : name === 'qwen2-moe' ? 60 : 8;
    const T = 97;
    const logits = Float32Array.from({ length: T * E }, () => rng.normal());
    const preset = { ...routingPresets[name], aux: undefined } as sk.RouteOptions;
    const o: TopkOptions = { ...(preset as TopkOptions), k: preset.k ?? 1 };
    if (name === 'deepseek-v3') o.selectionBias = Float32Array.from({ length: E }, () => rng.normal() * 0.05);
    const dl = cuda.toDevice({ data: logits, shape: [T, E] });
    const plan = cuda.route(dl, { ...preset, selectionBias: o.selectionBias ?? undefined } as sk.CudaRouteOptions);
    const h = plan.toHost();
    using([dl, plan], () => {
      checkRoute(`preset ${name}`, logits, T, E, o, h);
      checkAgainstCpuRoute(`preset ${name}`, logits, T, E, o, h);
    });
  }
  // Options the GPU does not run are refused with a pointer to the CPU route().
  const dl = cuda.toDevice({ data: new Float32Array(4 * 8), shape: [4, 8] });
  using([dl], () => {
    assert.throws(() => cuda.route(dl, routingPresets.mixtral as sk.CudaRouteOptions), /options\.aux .* not computed on the GPU/);
    assert.throws(() => cuda.route(dl, routingPresets.switch as sk.CudaRouteOptions), /not supported on the GPU/);
    assert.throws(() => cuda.route(dl, routingPresets.hash as sk.CudaRouteOptions), /options\.mode = "hash" is not supported on the GPU/);
  });
});

cudaTest('route breaks ties to the lower expert (and the lower group)', async () => {
  const T = 3, E = 16;
  const logits = new Float32Array(T * E).fill(1);
  logits[E + 9] = 2; // token 1: expert 9 first, then 0, 1, …
  const dl = cuda.toDevice({ data: logits, shape: [T, E] });
  const p1 = cuda.route(dl, { k: 3 });
  const p2 = cuda.route(dl, { k: 2, groups: 4, topkGroups: 2, groupScore: 'max' });
  using([dl, p1, p2], () => {
    assert.deepEqual(Array.from(p1.toHost().expertIds!), [0, 1, 2, 9, 0, 1, 0, 1, 2]);
    // token 1: group 2 (experts 8–11) wins by its max, then group 0; top-2 of those: 9, 0.
    assert.deepEqual(Array.from(p2.toHost().expertIds!), [0, 1, 9, 0, 0, 1]);
  });
});

cudaTest('MoE on the GPU end to end: route → expertsForward = the CPU ops on the same plan', async () => {
  const rng = new Rng(101);
  const T = 48, E = 8, k = 2, d = 32, ffn = 48;
  const logits = Float32Array.from({ length: T * E }, () => rng.normal());
  const x = rng.floats(T * d);
  const gate = rng.floats(E * ffn * d, 0.2), up = rng.floats(E * ffn * d, 0.2), down = rng.floats(E * d * ffn, 0.2);
  const dl = cuda.toDevice({ data: logits, shape: [T, E] });
  const plan = cuda.route(dl, { k, scoreBeforeTopK: false });
  const hp = plan.toHost();
  const ref = expertsForward({ data: x, shape: [T, d] }, { ...hp, k },
    prepackGatedExperts({ data: gate, shape: [E, ffn, d] }, { data: up, shape: [E, ffn, d] }),
    prepackExperts({ data: down, shape: [E, d, ffn] })).data;
  const dx = cuda.toDevice({ data: x, shape: [T, d] });
  const ex = { gate: cuda.toDevice({ data: gate, shape: [E, ffn, d] }), up: cuda.toDevice({ data: up, shape: [E, ffn, d] }), down: cuda.toDevice({ data: down, shape: [E, d, ffn] }) };
  const y = cuda.expertsForward(dx, plan, ex);
  using([dl, plan, dx, ex.gate, ex.up, ex.down, y], () => {
    const err = relError(host(y), ref);
    assert.ok(err <= F32_TOL, `end-to-end MoE: rel err ${err.toExponential(3)} on ${device}`);
  });
});

// ---- MoE block --------------------------------------------------------------------------

function randomMoE(rng: Rng, preset: 'mixtral' | 'qwen2-moe' | 'deepseek-v3' | 'switch' | 'gshard', d: number, f: number, E: number, round = false) {
  const r = (n: number, scale: number) => (round ? roundBf16(rng.floats(n, scale)) : rng.floats(n, scale));
  const t = (shape: number[], scale = 1 / Math.sqrt(shape[shape.length - 1])) => ({ data: r(shape.reduce((a, b) => a * b, 1), scale), shape });
  const arch = sk.moePresets[preset];
  const sf = f;
  const weights: sk.MoEWeights = { router: t([E, d]), down: t([E, d, f]) };
  if (arch.gated) {
    if (preset === 'qwen2-moe') weights.gateUp = t([E, 2 * f, d]);
    else {
      weights.gate = t([E, f, d]);
      weights.up = t([E, f, d]);
    }
  } else {
    weights.w1 = t([E, f, d]);
    weights.b1 = t([E, f], 0.1);
    weights.b2 = t([E, d], 0.1);
  }
  if ((arch.sharedExperts ?? 0) > 0) weights.shared = { gate: t([sf, d]), up: t([sf, d]), down: t([d, sf]) };
  if (arch.sharedExpertGate) weights.sharedGate = t([1, d]);
  if (preset === 'deepseek-v3') weights.routerBias = Float32Array.from({ length: E }, () => rng.normal() * 0.05);
  return new sk.MoELayer({ dModel: d, dFF: f, numExperts: E, architecture: preset, sharedDFF: sf }, weights);
}

cudaTest('cuda.moeLayer: the MoELayer presets on the GPU (weights uploaded once) match MoELayer.forward on the CPU', async () => {
  const rng = new Rng(120);
  for (const [preset, E] of [['mixtral', 8], ['qwen2-moe', 12], ['deepseek-v3', 32]] as const) {
    const [T, d, f] = [21, 32, 48];
    const layer = randomMoE(rng, preset, d, f, E);
    const x = rng.floats(T * d);
    const ref = layer.forward({ data: x, shape: [T, d] });
    const gpu = cuda.moeLayer(layer);
    const dx = cuda.toDevice({ data: x, shape: [T, d] });
    const { y, plan } = gpu.forward(dx);
    const second = await gpu.forwardAsync(dx); // the weights stay put: a second call reuses them
    using([dx, y, plan, second.y, second.plan], () => {
      const err = relError(host(y), ref.y.data);
      assert.ok(err <= F32_TOL, `moeLayer ${preset}: rel err ${err.toExponential(3)} on ${device}`);
      assert.deepEqual(Array.from(plan.toHost().expertIds!), Array.from(ref.plan.expertIds), `moeLayer ${preset}: routing`);
      assert.deepEqual(Array.from(host(second.y)), Array.from(host(y)), `moeLayer ${preset}: second forward differs`);
    });
    assert.ok(gpu.bytes > 0);
    gpu.dispose();
    assert.throws(() => gpu.forward(dx), /disposed/);
  }
  // bf16 weights and activations, against the CPU layer on the same bf16-rounded weights.
  const [T, d, f, E] = [16, 32, 64, 8];
  const layer = randomMoE(rng, 'mixtral', d, f, E, true);
  const x = roundBf16(rng.floats(T * d));
  const ref = layer.forward({ data: x, shape: [T, d] });
  const gpu = cuda.moeLayer(layer, { dtype: 'bf16' });
  const dx = cuda.toDevice({ data: x, shape: [T, d] }, { dtype: 'bf16' });
  const { y, plan } = gpu.forward(dx);
  using([dx, y, plan, gpu], () => {
    assert.equal(y.dtype, 'bf16');
    const err = relError(host(y), ref.y.data);
    assert.ok(err <= BF16_TOL, `moeLayer mixtral bf16: rel err ${err.toExponential(3)} on ${device}`);
  });
  // Routers the GPU does not run are refused at construction.
  assert.throws(() => cuda.moeLayer(randomMoE(rng, 'switch', 16, 16, 4)), /router cannot run on the GPU: .*capacityFactor/);
  assert.throws(() => cuda.moeLayer(randomMoE(rng, 'gshard', 16, 16, 4)), /router cannot run on the GPU/);
});

// ---- streams, lifetime, errors --------------------------------------------------------------

cudaTest('streams: a tensor made on one stream and used on another is ordered; dispose right after enqueueing is safe', async () => {
  const rng = new Rng(110);
  const s1 = cuda.createStream();
  const s2 = cuda.createStream();
  const x = rng.floats(64 * 96), W1 = rng.floats(80 * 96, 0.1), W2 = rng.floats(40 * 80, 0.1);
  const ref = linear(linear({ data: x, shape: [64, 96] }, { data: W1, shape: [80, 96] }), { data: W2, shape: [40, 80] }).data;
  const dx = cuda.toDevice({ data: x, shape: [64, 96] }, { stream: s1 });
  const dw1 = cuda.toDevice({ data: W1, shape: [80, 96] }, { stream: s1 });
  const dw2 = cuda.toDevice({ data: W2, shape: [40, 80] }, { stream: s2 });
  const h = cuda.linear(dx, dw1, { stream: s1 });
  dx.dispose(); // still read by the enqueued op: freed after it, in stream order
  const y = cuda.linear(h, dw2, { stream: s2 }); // s2 waits for h's producer on s1
  h.dispose();
  await s2.synchronize();
  s1.synchronizeSync();
  using([dw1, dw2, y], () => {
    assert.ok(relError(host(y), ref) <= F32_TOL, 'two-stream chain');
    assert.ok(dx.disposed && h.disposed);
  });
});

cudaTest('errors: disposed tensors, dtype and shape mismatches, host tensors and bad options throw named errors', () => {
  const a = cuda.toDevice({ data: new Float32Array(6), shape: [2, 3] });
  const b = cuda.toDevice({ data: new Float32Array(6), shape: [2, 3] }, { dtype: 'bf16' });
  const c = cuda.toDevice({ data: new Float32Array(8), shape: [2, 4] });
  const i = cuda.toDevice({ data: new Int32Array(6), shape: [2, 3] });
  using([a, b, c, i], () => {
    assert.throws(() => cuda.linear(a, b), TypeError, 'dtype mismatch');
    assert.throws(() => cuda.linear(a, c), /W\.shape\[1\] \(in = 4\) must equal x\.shape\[1\] \(in = 3\)/);
    assert.throws(() => cuda.linear(i, i), /must be f32 or bf16/);
    assert.throws(() => cuda.linear({ data: new Float32Array(6), shape: [2, 3] } as unknown as DeviceTensor, a), /x must be a DeviceTensor/);
    assert.throws(() => cuda.linear(a, a, { bias: c }), /bias has 8 elements, expected 2/);
    assert.throws(() => cuda.linear(a, a, { activation: 'tanh' as ActivationName }), RangeError);
    assert.throws(() => cuda.toDevice({ data: new Float32Array(5), shape: [2, 3] }), /x\.data has 5 elements/);
    assert.throws(() => cuda.toDevice({ data: new Float64Array(6) as unknown as Float32Array, shape: [2, 3] }), TypeError);
    assert.throws(() => cuda.toDevicePlan({ sortedSlots: Int32Array.from([0, 0]), expertOffsets: Int32Array.from([0, 2]), weights: new Float32Array(2), k: 1 }), /appears twice/);
    assert.throws(() => cuda.toDeviceBsr({ shape: [32, 32], blockSize: 16, rowPtr: Int32Array.from([0, 2, 1]), colIdx: Int32Array.from([0]), values: new Float32Array(256) }), /non-decreasing/);
    assert.throws(() => cuda.toDeviceNM({ data: Float32Array.from({ length: 32 * 64 }, () => 1), shape: [32, 64] }, { n: 2, m: 4 }), /not 2:4 sparse/);
    assert.throws(() => cuda.route(a, { k: 4 }), /options\.k = 4 must be ≤ experts = 3/);
    assert.throws(() => cuda.route(a, { k: 1, capacityFactor: 1.25 } as sk.CudaRouteOptions), /capacityFactor = 1.25 is not supported on the GPU/);
  });
  assert.throws(() => cuda.linear(a, a), /x was disposed/);
  assert.throws(() => a.toHost(), /was disposed/);
  a.dispose(); // idempotent
});

cudaTest('inputs are not modified and outputs are fresh tensors', () => {
  const rng = new Rng(111);
  const x = rng.floats(5 * 7), W = rng.floats(3 * 7);
  const dx = cuda.toDevice({ data: x, shape: [5, 7] }), dw = cuda.toDevice({ data: W, shape: [3, 7] });
  const y1 = cuda.linear(dx, dw, { activation: 'relu' });
  const y2 = cuda.linear(dx, dw, { activation: 'relu' });
  using([dx, dw, y1, y2], () => {
    assert.notEqual(y1, y2);
    assert.deepEqual(Array.from(host(dx)), Array.from(x));
    assert.deepEqual(Array.from(host(dw)), Array.from(W));
    assert.deepEqual(Array.from(host(y1)), Array.from(host(y2)));
  });
});

test('cuda: without the backend every cuda.* call throws CudaUnavailableError with info()\'s reason', (t) => {
  if (backend.available) {
    t.skip(`the CUDA backend is available here (${device})`);
    return;
  }
  for (const call of [
    () => cuda.toDevice({ data: new Float32Array(1), shape: [1] }),
    () => cuda.createStream(),
    () => cuda.linear(null as unknown as DeviceTensor, null as unknown as DeviceTensor),
    () => cuda.route(null as unknown as DeviceTensor, { k: 1 }),
  ]) {
    assert.throws(call, (e: unknown) => e instanceof CudaUnavailableError && e.message.endsWith(backend.reason) && e.status === backend.status);
  }
  assert.equal(cuda.isAvailable(), false);
});
