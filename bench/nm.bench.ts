/**
 * N:M family: `nmLinear` (prepacked N:M weight) against our dense `linear`
 * (prepacked weight) on the same matrix, in the same process, interleaved
 * sample by sample, at the same thread count.
 *
 * - W is `[out, in]` (nn.Linear layout): 4096×4096 and 4096×14336 (out 4096,
 *   in 14336, a down projection); `BENCH_NM_SHAPES=14336x4096` adds the up
 *   projection. Patterns 2:4, 1:4, 2:8, 1:8; tokens 1, 16, 128, 512.
 * - Both sides compute the same product: the dense weight is `toDense()` of
 *   the N:M matrix, prepacked by `prepackLinear`; the N:M one by `prepackNM`.
 *   Outputs are compared once per case (relative error).
 * - GFLOP/s counts dense-equivalent work (2·tokens·in·out) for both, so the
 *   N:M figure is its effective rate. "W MB/call" is the weight data a call
 *   reads once from memory: dense 4·in·out bytes; N:M its values and packed
 *   index bits (`bytesPerCall`).
 */
import { defineSuite, filterByEnv, threadList, type CaseSpec } from './harness';
import { NMSparseMatrix, linear, nmLinear, prepackLinear, randomTensor } from '../lib/index';

const SHAPES: [number, number][] = [
  [4096, 4096],
  [4096, 14336],
];
const EXTRA_SHAPES: [number, number][] = [[14336, 4096]];
const PATTERNS: [number, number][] = [
  [2, 4],
  [1, 4],
  [2, 8],
  [1, 8],
];
const TOKENS = [1, 16, 128, 512];
const THREADS = [2];

function relError(a: Float32Array, b: Float32Array): number {
  let num = 0,
    den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / (den || 1));
}

export default defineSuite({
  family: 'nm',
  title: 'N:M sparse linear: `nmLinear` vs dense `linear` (both prepacked)',
  description: [
    'y = x·Wᵀ, fp32, x: [tokens, in], W: [out, in] N:M. Case = pattern tokens×in×out. ',
    'Speedup = dense time / N:M time (> 1: N:M faster). GFLOP/s are dense-equivalent (2·tokens·in·out). ',
    'W MB/call: weight bytes a call reads (dense 4·in·out; N:M values + packed indices).',
  ].join(''),

  async run(h) {
    const all = [...SHAPES, ...EXTRA_SHAPES];
    const shapes = process.env.BENCH_NM_SHAPES
      ? filterByEnv('BENCH_NM_SHAPES', all, (s) => s.join('x'))
      : SHAPES;
    const patterns = filterByEnv('BENCH_NM_PATTERNS', PATTERNS, (p) => `${p[0]}:${p[1]}`);
    const tokensList = filterByEnv('BENCH_NM_TOKENS', TOKENS, String).map(Number);
    for (const [out, inF] of shapes) {
      for (const [n, m] of patterns) {
        const W = NMSparseMatrix.random(out, inF, { n, m }, { seed: out + inF + m, scale: 1 / Math.sqrt(inF) });
        const packedNM = W.prepack();
        let packedDense: ReturnType<typeof prepackLinear> | undefined = prepackLinear(W.toDense());
        const denseBytes = 4 * out * inF;
        for (const tokens of tokensList) {
          const x = randomTensor([tokens, inF], 7 + tokens);
          const yN = new Float32Array(tokens * out);
          const yD = new Float32Array(tokens * out);
          nmLinear(x, packedNM, { out: yN });
          linear(x, packedDense, { out: yD });
          const err = relError(yN, yD);
          if (!(err < 1e-5)) throw new Error(`nm bench: ${n}:${m} ${tokens}×${inF}×${out}: nmLinear and linear disagree (${err})`);
          const pd = packedDense;
          for (const threads of threadList(THREADS)) {
            const spec: CaseSpec = {
              name: `${n}:${m} ${tokens}×${inF}×${out}`,
              params: { pattern: `${n}:${m}`, tokens, in: inF, out },
              threads,
              flops: 2 * tokens * inF * out,
              contenders: [
                { name: 'nm', fn: () => nmLinear(x, packedNM, { out: yN }) },
                { name: 'dense', fn: () => linear(x, pd, { out: yD }) },
              ],
              ratios: [{ of: 'nm', vs: 'dense' }],
              columns: (r) => {
                const b = r.name === 'nm' ? packedNM.bytesPerCall : denseBytes;
                return { 'W MB/call': b / 1e6, 'W bytes vs dense': b / denseBytes };
              },
              notes: [`${packedNM.kernel}; relative error vs dense ${err.toExponential(2)}`],
            };
            await h.case(spec);
          }
        }
        packedDense = undefined; // let the 4·in·out bytes go before the next pattern
      }
    }
    h.note('Targets (2 threads): 2:4 ≥ 1.6× at tokens ≤ 16, ≥ 1.3× at ≥ 128; 1:4 ≥ 2.8× / ≥ 2.0×; 1:8 ≥ 4× at ≤ 16; 2:4 W bytes ≤ 0.57× dense.');
  },
});
