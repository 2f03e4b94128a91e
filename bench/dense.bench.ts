/**
 * Dense family: sparsekit `linear` (prepacked weights) against onnxruntime-node
 * `MatMul` (CPU execution provider, fp32) on transformer shapes, at 1 and 2
 * threads, in the same process, interleaved sample by sample.
 *
 * Fairness:
 * - ORT's model holds the weight as the initializer B = Wᵀ [in, out], so ORT
 *   prepacks it once at session creation, just as `prepackLinear` does for us.
 * - ORT session: intraOpNumThreads = the case's thread count, interOpNumThreads
 *   1, sequential execution, all graph optimizations. Sessions, input tensors
 *   and a pre-allocated output tensor are created ahead; only `session.run` is
 *   timed (it includes onnxruntime-node's setImmediate hop and feed checks,
 *   a few microseconds). Ours writes into a preallocated `out` as well.
 * - ORT's intra-op threads do not spin between runs (allow_spinning 0, see
 *   ortSpin in bench/onnx.ts: spinning ORT workers took the second core from
 *   our next call and barely sped ORT up); BENCH_ORT_SPIN=1 turns ORT's
 *   default spinning back on. The harness also makes one untimed call after
 *   every switch of contender (for calls under 100 ms).
 * - Our output is checked against ORT's once per shape (relative error).
 */
import * as ort from 'onnxruntime-node';
import { defineSuite, filterByEnv, fmt, readBoundColumn, threadList, type CaseSpec } from './harness';
import { matmulModel, ortSpin } from './onnx';
import { info, linear, prepackLinear, randomTensor, setIsa, type Float32Tensor, type IsaName } from '../lib/index';

/** (tokens, in, out) from issue 2. */
const SHAPES: [number, number, number][] = [
  [1, 4096, 4096],
  [16, 4096, 4096],
  [128, 1024, 4096],
  [512, 1024, 4096],
  [2048, 1024, 4096],
  [512, 4096, 14336],
];
const THREADS = [1, 2];
/** Shape that also runs our scalar kernel, to show the ISA dispatch is real. */
const SCALAR_SHAPE = '512x1024x4096';

/** ‖a − b‖₂ / ‖b‖₂ and max |a − b| / max |b|. */
function relError(a: Float32Array, b: Float32Array): { l2: number; max: number } {
  let num = 0, den = 0, maxDiff = 0, maxRef = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
    maxDiff = Math.max(maxDiff, Math.abs(d));
    maxRef = Math.max(maxRef, Math.abs(b[i]));
  }
  return { l2: Math.sqrt(num / (den || 1)), max: maxDiff / (maxRef || 1) };
}

const TOLERANCE = 1e-4;

export default defineSuite({
  family: 'dense',
  title: 'Dense linear: sparsekit `linear` (prepacked) vs onnxruntime-node `MatMul`',
  description: [
    'y = x·Wᵀ, fp32, x: [tokens, in], W: [out, in]. Case = tokens×in×out. ',
    'Speed ratio = ORT time / our time (> 1: sparsekit faster). ',
    'For tokens = 1, GB/s is the rate of reading W once (4·in·out bytes) and "vs read bound" is time / (W bytes / R), ',
    'R the streaming-read rate `measureReadBandwidth` measures in this process just before and after the case (BENCH_MEM_GBPS overrides). ',
    `sparsekit-scalar (${SCALAR_SHAPE} only) is our kernel forced to the scalar ISA.`,
  ].join(''),

  async run(h) {
    const spin = ortSpin();
    const bestIsa: IsaName = info().isa;
    h.meta.onnxruntime = { version: ort.env.versions?.node ?? 'unknown', allowSpinning: spin };
    h.meta.isa = bestIsa;
    h.note(
      `onnxruntime-node ${ort.env.versions?.node ?? '?'}: CPU EP, intraOpNumThreads = threads, interOpNumThreads = 1, ` +
        `graphOptimizationLevel all, allow_spinning ${spin}; sparsekit ${bestIsa}.`,
    );

    // BENCH_DENSE_SHAPES=1x4096x4096,512x1024x4096 and BENCH_THREADS=2 narrow the run
    const shapes = filterByEnv('BENCH_DENSE_SHAPES', SHAPES, (s) => s.join('x'));
    for (const [tokens, K, N] of shapes) {
      const key = `${tokens}x${K}x${N}`;
      const x = randomTensor([tokens, K], 1000 + tokens);
      const W = randomTensor([N, K], 2000 + N + K, 1 / Math.sqrt(K));
      const packed = prepackLinear(W);
      let packedScalar: ReturnType<typeof prepackLinear> | undefined;
      if (key === SCALAR_SHAPE) {
        setIsa('scalar');
        try {
          packedScalar = prepackLinear(W);
        } finally {
          setIsa(bestIsa);
        }
      }
      const modelBytes = matmulModel(K, N, W.data);
      const ours = new Float32Array(tokens * N);
      const oursScalar = new Float32Array(tokens * N);
      const ortOut = new ort.Tensor('float32', new Float32Array(tokens * N), [tokens, N]);
      const feeds = { X: new ort.Tensor('float32', x.data, [tokens, K]) };
      const fetches = { Y: ortOut };
      const flops = 2 * tokens * K * N;
      const wBytes = 4 * K * N;
      let checked = false;

      for (const threads of threadList(THREADS)) {
        const session = await ort.InferenceSession.create(modelBytes, {
          executionProviders: ['cpu'],
          intraOpNumThreads: threads,
          interOpNumThreads: 1,
          executionMode: 'sequential',
          graphOptimizationLevel: 'all',
          extra: { session: { intra_op: { allow_spinning: spin } } },
        } as ort.InferenceSession.SessionOptions);
        try {
          const notes: string[] = [];
          if (!checked) {
            // one correctness check per shape: same computation on both sides
            linear(x, packed, { out: ours });
            await session.run(feeds, fetches);
            const e = relError(ours, ortOut.data as Float32Array);
            notes.push(`${key}: sparsekit vs ORT relative error ‖·‖₂ ${e.l2.toExponential(2)}, max ${e.max.toExponential(2)} (${packed.kernel})`);
            if (!(e.l2 < TOLERANCE)) throw new Error(`dense bench: ${key} sparsekit and ORT disagree (relative error ${e.l2})`);
            if (packedScalar) {
              linear(x, packedScalar, { out: oursScalar });
              const es = relError(oursScalar, ortOut.data as Float32Array);
              notes.push(`${key}: sparsekit-scalar (${packedScalar.kernel}) vs ORT relative error ‖·‖₂ ${es.l2.toExponential(2)}`);
              if (!(es.l2 < TOLERANCE)) throw new Error(`dense bench: ${key} scalar and ORT disagree (relative error ${es.l2})`);
            }
            checked = true;
          }
          const xt: Float32Tensor = x;
          const spec: CaseSpec = {
            name: `${tokens}×${K}×${N}`,
            params: { tokens, in: K, out: N },
            threads,
            flops,
            bytes: tokens === 1 ? wBytes : undefined,
            contenders: [
              { name: 'sparsekit', fn: () => linear(xt, packed, { out: ours }) },
              { name: 'onnxruntime', fn: () => session.run(feeds, fetches) },
            ],
            ratios: [{ of: 'sparsekit', vs: 'onnxruntime' }],
            notes,
          };
          const bound = tokens === 1 ? readBoundColumn(wBytes, threads) : undefined;
          if (bound) spec.columns = bound.column;
          if (packedScalar) {
            const ps = packedScalar;
            spec.contenders.push({ name: 'sparsekit-scalar', fn: () => linear(xt, ps, { out: oursScalar }) });
            spec.ratios!.push({ of: 'sparsekit', vs: 'sparsekit-scalar' });
          }
          await h.case(spec);
          if (bound) h.note(`${spec.name} (${threads} threads): read bound at ${fmt(bound.rate())} GB/s measured.`);
          for (const n of notes) h.note(n);
        } finally {
          await session.release();
        }
      }
    }
  },
});
