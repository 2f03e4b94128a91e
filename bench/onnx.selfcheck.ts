/**
 * Self-check of the hand-written ONNX writer (bench/onnx.ts): the models it
 * writes are loaded and run by onnxruntime-node and compared with plain JS
 * references. Run manually (it is not part of `npm test`):
 *
 *   node --import tsx --test bench/onnx.selfcheck.ts
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import {
  attrFloat,
  attrInts,
  floatTensor,
  matmulModel,
  model,
  node,
  transpose,
  valueInfo,
  varint,
  int64Tensor,
} from './onnx';
import { linear, randomTensor } from '../lib/index';

const opts: ort.InferenceSession.SessionOptions = {
  executionProviders: ['cpu'],
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
  graphOptimizationLevel: 'all',
};

/** Y = X·Wᵀ in float64, X: [M, K], W: [N, K]. */
function refLinear(X: Float32Array, W: Float32Array, M: number, K: number, N: number): Float64Array {
  const Y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += X[m * K + k] * W[n * K + k];
      Y[m * N + n] = s;
    }
  return Y;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

test('varint encodes protobuf examples', () => {
  assert.deepEqual([...varint(0)], [0]);
  assert.deepEqual([...varint(1)], [1]);
  assert.deepEqual([...varint(150)], [0x96, 0x01]);
  assert.deepEqual([...varint(300)], [0xac, 0x02]);
  assert.deepEqual([...varint(2 ** 31)], [0x80, 0x80, 0x80, 0x80, 0x08]);
  // int64 -1: ten bytes, two's complement
  assert.deepEqual([...varint(-1)], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
});

test('transpose', () => {
  const W = Float32Array.from([1, 2, 3, 4, 5, 6]); // [N=2, K=3]
  assert.deepEqual([...transpose(W, 2, 3)], [1, 4, 2, 5, 3, 6]);
});

for (const M of ['M', 5] as const) {
  test(`matmulModel runs in onnxruntime and matches a JS reference (M ${typeof M === 'string' ? 'symbolic' : 'fixed'})`, async () => {
    const rows = 5, K = 37, N = 19;
    const X = randomTensor([rows, K], 11).data;
    const W = randomTensor([N, K], 12).data;
    const session = await ort.InferenceSession.create(matmulModel(K, N, W, { M }), opts);
    assert.deepEqual(session.inputNames, ['X']);
    assert.deepEqual(session.outputNames, ['Y']);
    const { Y } = await session.run({ X: new ort.Tensor('float32', X, [rows, K]) });
    assert.deepEqual(Y.dims, [rows, N]);
    const ref = refLinear(X, W, rows, K, N);
    assert.ok(maxAbsDiff(Y.data as Float32Array, ref) < 1e-4, 'ORT MatMul vs JS reference');
    // and sparsekit's linear computes the same thing from the same W
    const ours = linear({ data: X, shape: [rows, K] }, { data: W, shape: [N, K] });
    assert.ok(maxAbsDiff(ours.data, ref) < 1e-4, 'sparsekit linear vs JS reference');
    // pre-allocated output (what the dense benchmark uses)
    const out = new ort.Tensor('float32', new Float32Array(rows * N), [rows, N]);
    await session.run({ X: new ort.Tensor('float32', X, [rows, K]) }, { Y: out });
    assert.ok(maxAbsDiff(out.data as Float32Array, ref) < 1e-4, 'pre-allocated output');
    await session.release();
  });
}

test('generic helpers: int/float/ints attributes, several initializers, negative ints', async () => {
  // Z = ReduceMean(Gemm(X, Wt, b; alpha=0.5, beta=2, transB=1), axes=[-1], keepdims=1)
  const M = 3, K = 4, N = 6;
  const X = randomTensor([M, K], 21).data;
  const W = randomTensor([N, K], 22).data;
  const b = randomTensor([N], 23).data;
  const bytes = model({
    opsets: { '': 17 },
    graph: {
      nodes: [
        node('Gemm', ['X', 'W', 'b'], ['G'], { alpha: 0.5, beta: attrFloat(2), transB: 1 }),
        node('ReduceMean', ['G'], ['Z'], { axes: attrInts([-1]), keepdims: 1 }),
      ],
      initializers: [floatTensor('W', [N, K], W), floatTensor('b', [N], b)],
      inputs: [valueInfo('X', ['batch', K])],
      outputs: [valueInfo('G', ['batch', N]), valueInfo('Z', ['batch', 1])],
    },
  });
  const session = await ort.InferenceSession.create(bytes, opts);
  const r = await session.run({ X: new ort.Tensor('float32', X, [M, K]) });
  const xw = refLinear(X, W, M, K, N);
  const G = Array.from(xw, (v, i) => 0.5 * v + 2 * b[i % N]);
  assert.ok(maxAbsDiff(r.G.data as Float32Array, G) < 1e-5);
  const Z = [0, 1, 2].map((m) => G.slice(m * N, m * N + N).reduce((s, v) => s + v, 0) / N);
  assert.ok(maxAbsDiff(r.Z.data as Float32Array, Z) < 1e-5);
  await session.release();
});

test('string attributes and int64 initializers (Gelu approximate=tanh, Reshape)', async () => {
  const X = Float32Array.from([-2, -0.5, 0, 0.5, 1, 3]);
  const bytes = model({
    opsets: { '': 20 },
    graph: {
      nodes: [node('Gelu', ['X'], ['H'], { approximate: 'tanh' }), node('Reshape', ['H', 'shape'], ['Y'])],
      initializers: [int64Tensor('shape', [2], [3, 2])],
      inputs: [valueInfo('X', [6])],
      outputs: [valueInfo('Y', [3, 2])],
    },
  });
  const session = await ort.InferenceSession.create(bytes, opts);
  const { Y } = await session.run({ X: new ort.Tensor('float32', X, [6]) });
  assert.deepEqual(Y.dims, [3, 2]);
  const ref = Array.from(X, (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3))));
  assert.ok(maxAbsDiff(Y.data as Float32Array, ref) < 1e-5);
  await session.release();
});

test('com.microsoft domain op with a float attribute (QuickGelu)', async () => {
  const X = Float32Array.from([-3, -1, 0, 0.25, 2]);
  const alpha = 1.5;
  const bytes = model({
    opsets: { '': 17, 'com.microsoft': 1 },
    graph: {
      nodes: [node('QuickGelu', ['X'], ['Y'], { alpha: attrFloat(alpha) }, { domain: 'com.microsoft' })],
      inputs: [valueInfo('X', ['n'])],
      outputs: [valueInfo('Y', ['n'])],
    },
  });
  const session = await ort.InferenceSession.create(bytes, opts);
  const { Y } = await session.run({ X: new ort.Tensor('float32', X, [X.length]) });
  const ref = Array.from(X, (x) => x / (1 + Math.exp(-alpha * x)));
  assert.ok(maxAbsDiff(Y.data as Float32Array, ref) < 1e-5);
  await session.release();
});

for (const normalize of [0, 1]) {
  test(`com.microsoft MoE node runs (top-1, relu, two experts, normalize_routing_weights=${normalize})`, async () => {
    // Shows the writer can express the contrib MoE op a later suite will use.
    // Observed contract (ORT 1.30 CPU): fc1 [E, inter, hidden], fc2
    // [E, hidden, inter]; router_probs are logits that ORT softmaxes, so with
    // k=1 the output is softmax(logits)[e] · relu(x·W1[e]ᵀ)·W2[e]ᵀ, and the
    // weight is 1 when normalize_routing_weights=1.
    const E = 2, H = 4, F = 8, M = 3;
    const X = randomTensor([M, H], 31).data;
    const W1 = randomTensor([E, F, H], 32).data;
    const W2 = randomTensor([E, H, F], 33).data;
    const logits = Float32Array.from([1, 0, 0, 1, 1, 0]); // tokens → experts 0, 1, 0
    const bytes = model({
      opsets: { '': 17, 'com.microsoft': 1 },
      graph: {
        nodes: [
          node('MoE', ['X', 'router_probs', 'W1', '', 'W2'], ['Y'], { k: 1, activation_type: 'relu', normalize_routing_weights: normalize }, { domain: 'com.microsoft' }),
        ],
        initializers: [floatTensor('W1', [E, F, H], W1), floatTensor('W2', [E, H, F], W2)],
        inputs: [valueInfo('X', ['M', H]), valueInfo('router_probs', ['M', E])],
        outputs: [valueInfo('Y', ['M', H])],
      },
    });
    const session = await ort.InferenceSession.create(bytes, opts);
    const { Y } = await session.run({
      X: new ort.Tensor('float32', X, [M, H]),
      router_probs: new ort.Tensor('float32', logits, [M, E]),
    });
    assert.deepEqual(Y.dims, [M, H]);
    const weight = normalize ? 1 : Math.E / (Math.E + 1); // softmax([1, 0])[0]
    const ref: number[] = [];
    for (let m = 0; m < M; m++) {
      const e = logits[m * E] > logits[m * E + 1] ? 0 : 1;
      const h = refLinear(X.subarray(m * H, m * H + H), W1.subarray(e * F * H, (e + 1) * F * H), 1, H, F).map((v) => Math.max(0, v));
      const y = refLinear(Float32Array.from(h), W2.subarray(e * H * F, (e + 1) * H * F), 1, F, H);
      ref.push(...Array.from(y, (v) => v * weight));
    }
    assert.ok(maxAbsDiff(Y.data as Float32Array, ref) < 1e-5);
    await session.release();
  });
}
