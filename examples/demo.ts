/**
 * sparsekit demo — `npm start [checkpoint.safetensors] [--preset mixtral] [--layer 0] [--tokens 256]`
 *
 * Runs a Mixture-of-Experts block forward on a batch: by default a
 * Mixtral-shaped layer (d 1024, ffn 2816, 8 experts, top-2) with seeded random
 * weights, or a real layer loaded from a safetensors checkpoint. Prints the
 * throughput with dense experts, 2:4 experts and 25 %-density block-sparse
 * experts, each sparse variant's output error against dense, and how the
 * router spread the tokens over the experts.
 */
import { info, loadSafetensors, MoELayer, randomTensor, type MoEPresetName, type MoEWeights } from '../lib/index';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : fallback;
}
const positional = process.argv.slice(2).filter((a, i, all) => !a.startsWith('--') && !(i > 0 && all[i - 1].startsWith('--')));
const checkpoint = positional[0];
const preset = arg('preset', 'mixtral') as MoEPresetName;
const layerIndex = Number(arg('layer', '0'));
const tokens = Number(arg('tokens', '256'));

const t0 = Date.now();
function progress(msg: string): void {
  process.stdout.write(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)} s] ${msg}\n`);
}

function buildLayer(): MoELayer {
  if (checkpoint) {
    progress(`opening ${checkpoint} (layer ${layerIndex}, preset ${preset})`);
    const file = loadSafetensors(checkpoint);
    const layer = MoELayer.fromCheckpoint(file, { preset, layer: layerIndex });
    file.close();
    return layer;
  }
  const d = 1024, f = 2816, E = 8;
  progress(`generating a Mixtral-shaped layer: d ${d}, ffn ${f}, ${E} experts, top-2 (seeded random weights, ${((3 * E * d * f * 4) / 2 ** 20).toFixed(0)} MiB)`);
  const w: MoEWeights = {
    router: randomTensor([E, d], 1, 1 / Math.sqrt(d) * 4),
    gate: randomTensor([E, f, d], 2, 1 / Math.sqrt(d)),
    up: randomTensor([E, f, d], 3, 1 / Math.sqrt(d)),
    down: randomTensor([E, d, f], 4, 1 / Math.sqrt(f)),
  };
  progress('packing weights');
  return new MoELayer({ dModel: d, dFF: f, numExperts: E, architecture: 'mixtral' }, w);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function timeForward(layer: MoELayer, x: { data: Float32Array; shape: number[] }, runs = 3): number {
  layer.forward(x);
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const s = process.hrtime.bigint();
    layer.forward(x);
    times.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  return median(times);
}

const layer = buildLayer();
const { dModel: d, numExperts: E } = layer.config;
const x = randomTensor([tokens, d], 7, 1);
const i = info();
progress(`sparsekit ${i.version}: ${i.isa} kernels (${i.isaReason}), ${i.threads} threads; batch of ${tokens} tokens`);

progress('dense experts: running');
const denseOut = layer.forward(x);
const denseMs = timeForward(layer, x);
const rows: { name: string; ms: number; err: number | null; kept: number }[] = [{ name: 'dense experts', ms: denseMs, err: null, kept: 1 }];

progress('pruning every expert to 2:4 (2 largest |w| of every 4)');
const nm = layer.sparsifyExperts({ format: 'nm', n: 2, m: 4 }, x);
progress('2:4 experts: running');
rows.push({ name: '2:4 experts', ms: timeForward(layer, x), err: nm.relativeError, kept: nm.density });

progress('pruning every expert to 25 % of its 32×32 blocks (largest L2 norm)');
const bsr = layer.sparsifyExperts({ format: 'bsr', blockSize: 32, density: 0.25 }, x);
progress('block-sparse experts: running');
rows.push({ name: 'block-sparse 25 % (32×32)', ms: timeForward(layer, x), err: bsr.relativeError, kept: bsr.density });
layer.densify();

console.log('');
console.log(`| experts | weights kept | forward ms | tokens/s | speedup | output error vs dense |`);
console.log(`| :-- | --: | --: | --: | --: | --: |`);
for (const r of rows) {
  console.log(
    `| ${r.name} | ${(r.kept * 100).toFixed(0)} % | ${r.ms.toFixed(1)} | ${Math.round((tokens / r.ms) * 1000).toLocaleString('en-US')} | ${(denseMs / r.ms).toFixed(2)}× | ${r.err === null ? '—' : r.err.toExponential(2)} |`,
  );
}
if (!checkpoint)
  console.log('\n(random weights have no structure for pruning to preserve, so the errors above are an upper bound; trained experts lose far less)');

const tpe = denseOut.aux.tokensPerExpert;
const max = Math.max(...tpe, 1);
console.log(`\ntokens per expert (top-${denseOut.plan.k} of ${E}, ${tokens} tokens, ${denseOut.aux.droppedSlots} dropped):`);
for (let e = 0; e < E; e++) {
  const bar = '█'.repeat(Math.round((tpe[e] / max) * 40));
  console.log(`  expert ${String(e).padStart(3)} │${bar.padEnd(40)}│ ${tpe[e]}`);
}
progress('done');
