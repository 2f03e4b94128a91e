/**
 * CUDA family (GPU only): the bf16 kernels of the CUDA plugin on the shapes of
 * issue 8, with the issue's targets checked at the end.
 *
 * - linear bf16 at 4096×4096×4096 and (16, 4096, 14336), against torch.matmul;
 * - bsrLinear (block 32) at density 50/25/10 % against our dense bf16 linear;
 * - 2:4 nmLinear (sparse tensor cores) against our dense bf16 linear;
 * - route at T = 16384, E = 256, top-8, 8 groups / top-4 (DeepSeek-V3 settings);
 * - expertsForward Mixtral-shaped (d 4096, ffn 14336, 8 experts, top-2) and
 *   DeepSeek-shaped (d 7168, ffn 2048, 256 experts, top-8) at T = 4096, against
 *   torch.matmul's TFLOP/s on dense matmuls of the same FLOPs.
 *
 * Timing: a contender's call enqueues `batch` back-to-back ops on the default
 * stream and awaits the stream, so launch and synchronisation costs are
 * amortised as in a model's forward pass; reported times are per op (median
 * over samples). Outputs are disposed right after enqueueing (stream-ordered).
 * Inputs are generated on the device (cuda.random) except the sparse
 * weights (BlockSparseMatrix.random, NMSparseMatrix.random), made on the host. The PyTorch numbers come from
 * bench/torch_ref.py (BENCH_TORCH_JSON), measured with CUDA events on the
 * same machine; bench/gpu-check.sh runs both.
 *
 * Without the CUDA backend the suite records why and measures nothing.
 */
import { readFileSync, existsSync } from 'node:fs';
import { defineSuite, type CaseSpec, type ContenderResult, type SuiteContext } from './harness';
import { BlockSparseMatrix, cuda, info, NMSparseMatrix, type DeviceTensor } from '../lib/index';

interface TorchRef {
  ms: number;
  tflops: number;
}

function torchRefs(): Record<string, TorchRef> {
  const f = process.env.BENCH_TORCH_JSON;
  if (!f || !existsSync(f)) return {};
  return JSON.parse(readFileSync(f, 'utf8'));
}

/** A contender that enqueues `batch` ops and waits for the GPU. */
function batched(name: string, batch: number, op: () => { dispose(): void }): { name: string; fn: () => Promise<void> } {
  return {
    name,
    fn: async () => {
      for (let i = 0; i < batch; i++) op().dispose();
      await cuda.synchronize();
    },
  };
}

function perOp(batch: number) {
  return (r: ContenderResult) => ({ 'µs per op': (r.median * 1000) / batch });
}

/**
 * BENCH_CUDA_SCALE=s divides every dimension by s (keeping multiples of 64):
 * a smoke run of this suite's code, e.g. against the plugin's host stand-in.
 * Its numbers mean nothing.
 */
const SCALE = Math.max(1, Number(process.env.BENCH_CUDA_SCALE ?? 1));
const dim = (v: number) => (SCALE === 1 ? v : Math.max(64, Math.round(v / SCALE / 64) * 64));

async function run(ctx: SuiteContext): Promise<void> {
  const backend = info().backends.cuda;
  ctx.meta.cuda = backend;
  if (!backend.available) {
    ctx.note(`skipped: ${backend.reason}`);
    return;
  }
  const torch = SCALE === 1 ? torchRefs() : {};
  if (SCALE !== 1) ctx.note(`BENCH_CUDA_SCALE=${SCALE}: every dimension divided by ${SCALE} (smoke run; the targets do not apply)`);
  ctx.meta.torch = torch;
  const dev = `${backend.device?.name} (sm_${backend.device?.sm})`;
  ctx.note(`device: ${dev}; torch anchors: ${Object.keys(torch).length ? `${(torch as unknown as { device: string }).device}, torch ${(torch as unknown as { torch: string }).torch}` : 'none (BENCH_TORCH_JSON unset)'}`);
  const targets: string[] = [];
  const target = (what: string, value: number, ok: boolean, want: string) =>
    targets.push(`${ok ? 'PASS' : 'FAIL'}  ${what}: ${value.toFixed(3)} (target ${want})`);
  const vsTorch = (name: string, flopsPerOp: number, batch: number) => (r: ContenderResult) => {
    const t = torch[name];
    const us = (r.median * 1000) / batch;
    const out: Record<string, string | number> = { 'µs per op': us, 'TFLOP/s': flopsPerOp / (us * 1e-6) / 1e12 };
    if (t) out['vs torch'] = `${((t.ms * 1000) / us).toFixed(2)}× (torch ${(t.ms * 1000).toFixed(1)} µs)`;
    return out;
  };
  const live: DeviceTensor[] = [];
  const keep = <T extends DeviceTensor>(t: T) => (live.push(t), t);

  try {
    // ---- dense linear vs torch.matmul ----
    for (const [m0, k0, n0, batch] of [[4096, 4096, 4096, 10], [16, 4096, 14336, 50]] as const) {
      const name = `linear ${m0}x${k0}x${n0}`;
      const [m, k, n] = [m0 === 16 ? 16 : dim(m0), dim(k0), dim(n0)];
      const x = keep(cuda.random([m, k], { dtype: 'bf16', seed: 1 }));
      const W = keep(cuda.random([n, k], { dtype: 'bf16', seed: 2, scale: 1 / 64 }));
      const flops = 2 * m * k * n;
      const spec: CaseSpec = {
        name: `${name} bf16`,
        threads: 1,
        flops: flops * batch,
        contenders: [batched('cuda', batch, () => cuda.linear(x, W))],
        columns: vsTorch(name, flops, batch),
      };
      const r = await ctx.case(spec);
      const t = torch[name];
      if (t) {
        const frac = (t.ms * 1000) / ((r.contenders[0].median * 1000) / batch);
        if (m === 4096) target('bf16 linear 4096³, fraction of torch.matmul', frac, frac >= 0.7, '≥ 0.70');
        else ctx.note(`linear ${name}: ${frac.toFixed(2)} of torch.matmul`);
      }
      if (m === 4096 && backend.device?.sm === 90) {
        cuda.setOption('epilogue', true);
        try {
          await ctx.case({ ...spec, name: `${name} bf16 (specialised epilogue, not yet the default)` });
        } finally {
          cuda.setOption('epilogue', false);
        }
        cuda.setOption('tma', false);
        try {
          await ctx.case({ ...spec, name: `${name} bf16 (wgmma fed by cp.async, tma off)` });
        } finally {
          cuda.setOption('tma', true);
        }
        cuda.setOption('wgmma', false);
        try {
          await ctx.case({ ...spec, name: `${name} bf16 (mma.sync, wgmma off)` });
        } finally {
          cuda.setOption('wgmma', true);
        }
      }
    }

    // ---- block-sparse vs dense ----
    {
      const [m, rows, cols, b, batch] = [dim(4096), dim(4096), dim(4096), 32, 10];
      const x = keep(cuda.random([m, cols], { dtype: 'bf16', seed: 3 }));
      const Wd = keep(cuda.random([rows, cols], { dtype: 'bf16', seed: 4, scale: 1 / 64 }));
      // Block 32 at each density (the issue's target is 32 at 25 %), and block 64 at 25 % for comparison.
      for (const [density, bb] of [[0.5, b], [0.25, b], [0.1, b], [0.25, 64]]) {
        const Wb = cuda.toDeviceBsr(BlockSparseMatrix.random({ shape: [rows, cols], blockSize: [bb, bb], density, seed: 5, scale: 0.05 }), { dtype: 'bf16' });
        try {
          const r = await ctx.case({
            name: `bsrLinear ${m}x${cols}x${rows} block ${bb} density ${density * 100}%`,
            threads: 1,
            flops: 2 * m * cols * rows * density * batch,
            contenders: [batched('cuda bsr', batch, () => cuda.bsrLinear(x, Wb)), batched('cuda dense', batch, () => cuda.linear(x, Wd))],
            ratios: [{ of: 'cuda bsr', vs: 'cuda dense' }],
            columns: perOp(batch),
          });
          if (density === 0.25 && bb === b) target('bsrLinear 25 % (block 32) speedup over dense bf16 linear', r.ratios[0].speedup, r.ratios[0].speedup >= 2.5, '≥ 2.5');
        } finally {
          Wb.dispose();
        }
      }
    }

    // ---- 2:4 vs dense ----
    for (const [m1, rows1, cols1, batch] of [[4096, 4096, 4096, 10], [4096, 14336, 4096, 5], [16, 14336, 4096, 50]] as const) {
      const [m, rows, cols] = [m1 === 16 ? 16 : dim(m1), dim(rows1), dim(cols1)];
      const x = keep(cuda.random([m, cols], { dtype: 'bf16', seed: 6 }));
      const Wd = keep(cuda.random([rows, cols], { dtype: 'bf16', seed: 7, scale: 1 / 64 }));
      const W24 = cuda.toDeviceNM(NMSparseMatrix.random(rows, cols, { n: 2, m: 4 }, { seed: 8, scale: 0.05 }), { dtype: 'bf16' });
      try {
        const r = await ctx.case({
          name: `nmLinear 2:4 ${m}x${cols}x${rows}`,
          threads: 1,
          flops: 2 * m * cols * rows * batch,
          contenders: [batched('cuda 2:4', batch, () => cuda.nmLinear(x, W24)), batched('cuda dense', batch, () => cuda.linear(x, Wd))],
          ratios: [{ of: 'cuda 2:4', vs: 'cuda dense' }],
          columns: perOp(batch),
        });
        if (m1 === 4096 && rows1 === 4096) target('2:4 nmLinear speedup over dense bf16 linear (4096³)', r.ratios[0].speedup, r.ratios[0].speedup >= 1.3, '≥ 1.3');
      } finally {
        W24.dispose();
      }
    }

    // ---- route ----
    {
      const [T, E, batch] = [dim(16384), 256, 50];
      const logits = keep(cuda.random([T, E], { seed: 9, scale: 4 }));
      const bias = keep(cuda.random([E], { seed: 10, scale: 0.1 }));
      const opts = { k: 8, score: 'sigmoid' as const, selectionBias: bias, groups: 8, topkGroups: 4, groupScore: 'sum-top2' as const, renormalize: true, scalingFactor: 2.5 };
      const r = await ctx.case({
        name: `route T=${T} E=${E} top-8, 8 groups top-4 (DeepSeek-V3)`,
        threads: 1,
        contenders: [batched('cuda route', batch, () => cuda.route(logits, opts))],
        columns: perOp(batch),
      });
      const us = (r.contenders[0].median * 1000) / batch;
      target('route T=16384 E=256 top-8 grouped, µs per call', us, us < 100, '< 100 µs');
    }

    // ---- experts ----
    for (const [label, T0, E, k, d0, ffn0, batch] of [
      ['experts mixtral T=4096', 4096, 8, 2, 4096, 14336, 3],
      ['experts deepseek T=4096', 4096, 256, 8, 7168, 2048, 3],
    ] as const) {
      const [T, d, ffn] = [dim(T0), dim(d0), dim(ffn0)];
      const x = keep(cuda.random([T, d], { dtype: 'bf16', seed: 11 }));
      const logits = keep(cuda.random([T, E], { seed: 12 }));
      const gate = keep(cuda.random([E, ffn, d], { dtype: 'bf16', seed: 13, scale: 1 / 64 }));
      const up = keep(cuda.random([E, ffn, d], { dtype: 'bf16', seed: 14, scale: 1 / 64 }));
      const down = keep(cuda.random([E, d, ffn], { dtype: 'bf16', seed: 15, scale: 1 / 64 }));
      const plan = cuda.route(logits, { k, renormalize: true });
      try {
        const flops = 2 * T * k * d * ffn * 3;
        const r = await ctx.case({
          name: `expertsForward ${label.replace('experts ', '')} (d ${d}, ffn ${ffn}, ${E} experts, top-${k})`,
          threads: 1,
          flops: flops * batch,
          contenders: [batched('cuda experts', batch, () => cuda.expertsForward(x, plan, { gate, up, down }))],
          columns: vsTorch(label, flops, batch),
        });
        const t = torch[label];
        if (t) {
          const ours = flops / (((r.contenders[0].median * 1000) / batch) * 1e-6) / 1e12;
          target(`${label}: TFLOP/s as a fraction of torch.matmul at equal FLOPs`, ours / t.tflops, ours / t.tflops >= 0.6, '≥ 0.60');
        }
      } finally {
        plan.dispose();
      }
      for (const t of [x, logits, gate, up, down]) t.dispose();
    }
  } finally {
    for (const t of live) t.dispose();
  }
  if (SCALE === 1) for (const t of targets) ctx.note(t);
  if (!Object.keys(torch).length) ctx.note('torch anchors missing: the ratios to torch.matmul were not checked');
}

export default defineSuite({
  family: 'cuda',
  title: 'CUDA plugin (bf16 on the GPU): linear, block-sparse, 2:4, route, experts',
  description:
    'Per-op times of back-to-back ops on one stream (batch enqueued, then awaited); PyTorch anchors from bench/torch_ref.py (CUDA events). Targets from issue 8 marked PASS/FAIL.',
  run,
});
