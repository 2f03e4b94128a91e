/**
 * Per-case GPU timings and a driver for Nsight Compute, for tuning the CUDA
 * kernels in one device call (bench/gpu-check.sh runs it with PROFILE=1):
 *
 *   node --import tsx scripts/cuda-profile.ts time   µs per op of each case (median of 7 batches)
 *   node --import tsx scripts/cuda-profile.ts once   each case once after one warm-up call, for
 *        ncu --clock-control none --section SpeedOfLight ... node --import tsx scripts/cuda-profile.ts once
 *
 * The cases are the benchmark shapes plus tuning variants (linear
 * raster, TMA on/off). Inputs are random (cuda.random), never zeros.
 */
import { BlockSparseMatrix, cuda, info, NMSparseMatrix, type DeviceTensor } from '../lib/index';

const mode = process.argv[2] ?? 'time';
const only = process.argv[3];
// PROFILE_SCALE=s divides every size by s: a dry run against the plugin's host stand-in.
const S = Math.max(1, Number(process.env.PROFILE_SCALE ?? 1));
const dv = (v: number) => Math.max(64, Math.round(v / S / 64) * 64);

interface Case {
  name: string;
  flops?: number;
  setup?: () => void;
  teardown?: () => void;
  op: () => { dispose(): void };
}

async function main() {
  const backend = info().backends.cuda;
  if (!backend.available) {
    console.log(`cuda-profile: skipped: ${backend.reason}`);
    return;
  }
  const live: { dispose(): void }[] = [];
  const keep = <T extends { dispose(): void }>(t: T) => (live.push(t), t);
  const rnd = (shape: number[], seed: number, scale = 1) => keep(cuda.random(shape, { dtype: 'bf16', seed, scale }));
  const cases: Case[] = [];

  for (const [n, big] of [[dv(4096), false], [dv(8192), true]] as const) {
    const x = rnd([n, n], 1);
    const W = rnd([n, n], 2, 1 / 64);
    for (const raster of [0, 4, 8, 16]) {
      if (big && raster !== 0 && raster !== 8) continue;
      cases.push({
        name: `linear ${n}³ TMA raster ${raster || 'all'}`,
        flops: 2 * n * n * n,
        setup: () => cuda.setOption('raster', raster),
        teardown: () => cuda.setOption('raster', 0),
        op: () => cuda.linear(x, W),
      });
    }
    cases.push({
      name: `linear ${n}³ TMA specialised epilogue`,
      flops: 2 * n * n * n,
      setup: () => cuda.setOption('epilogue', true),
      teardown: () => cuda.setOption('epilogue', false),
      op: () => cuda.linear(x, W),
    });
    if (!big)
      cases.push({
        name: `linear ${n}³ cp.async wgmma`,
        flops: 2 * n * n * n,
        setup: () => cuda.setOption('tma', false),
        teardown: () => cuda.setOption('tma', true),
        op: () => cuda.linear(x, W),
      });
  }
  {
    const n = dv(4096);
    const x = rnd([n, n], 3);
    const Wb = keep(cuda.toDeviceBsr(BlockSparseMatrix.random({ shape: [n, n], blockSize: [32, 32], density: 0.25, seed: 5, scale: 0.05 }), { dtype: 'bf16' }));
    cases.push({ name: `bsrLinear ${n}³ block 32 25 %`, flops: 2 * n ** 3 * 0.25, op: () => cuda.bsrLinear(x, Wb) });
    const W24 = keep(cuda.toDeviceNM(NMSparseMatrix.random(n, n, { n: 2, m: 4 }, { seed: 8, scale: 0.05 }), { dtype: 'bf16' }));
    cases.push({ name: `nmLinear 2:4 ${n}³`, flops: 2 * n ** 3, op: () => cuda.nmLinear(x, W24) });
  }
  {
    const logits = keep(cuda.random([dv(16384), 256], { seed: 9, scale: 4 }));
    const bias = keep(cuda.random([256], { seed: 10, scale: 0.1 }));
    const opts = { k: 8, score: 'sigmoid' as const, selectionBias: bias, groups: 8, topkGroups: 4, groupScore: 'sum-top2' as const, renormalize: true, scalingFactor: 2.5 };
    cases.push({ name: `route T=${dv(16384)} E=256 top-8 grouped`, op: () => cuda.route(logits, opts) });
  }
  for (const [label, T0, E, k, d0, ffn0] of [
    ['experts mixtral', 4096, 8, 2, 4096, 14336],
    ['experts deepseek', 4096, 256, 8, 7168, 2048],
  ] as const) {
    const [T, d, ffn] = [dv(T0), dv(d0), dv(ffn0)];
    const x = rnd([T, d], 11);
    const logits = keep(cuda.random([T, E], { seed: 12 }));
    const gate = rnd([E, ffn, d], 13, 1 / 64);
    const up = rnd([E, ffn, d], 14, 1 / 64);
    const down = rnd([E, d, ffn], 15, 1 / 64);
    const plan = keep(cuda.route(logits, { k, renormalize: true }));
    for (const [tag, opt, value] of [['', 'tma', true], [' cp.async wgmma', 'tma', false], [' specialised epilogue', 'epilogue', true]] as const) {
      cases.push({
        name: `${label} T=${T}${tag}`,
        flops: 2 * T * k * d * ffn * 3,
        setup: () => cuda.setOption(opt, value),
        teardown: () => {
          cuda.setOption('tma', true);
          cuda.setOption('epilogue', false);
        },
        op: () => cuda.expertsForward(x, plan, { gate, up, down }),
      });
    }
  }

  for (const c of cases) {
    if (only && !c.name.includes(only)) continue;
    c.setup?.();
    try {
      if (mode === 'once') {
        c.op().dispose();
        await cuda.synchronize();
        c.op().dispose();
        await cuda.synchronize();
        console.log(`ran ${c.name}`);
        continue;
      }
      for (let i = 0; i < 3; i++) c.op().dispose();
      await cuda.synchronize();
      const t1 = performance.now();
      c.op().dispose();
      await cuda.synchronize();
      const one = performance.now() - t1;
      const batch = Math.max(1, Math.min(200, Math.round(20 / Math.max(one, 0.01))));
      const samples: number[] = [];
      for (let r = 0; r < 7; r++) {
        const t0 = performance.now();
        for (let i = 0; i < batch; i++) c.op().dispose();
        await cuda.synchronize();
        samples.push(((performance.now() - t0) * 1000) / batch);
      }
      samples.sort((a, b) => a - b);
      const us = samples[3];
      const tf = c.flops ? `${(c.flops / (us * 1e-6) / 1e12).toFixed(1)} TFLOP/s` : '';
      console.log(`${c.name.padEnd(44)} ${us.toFixed(1).padStart(9)} µs  ${tf}  (p0 ${samples[0].toFixed(1)}, p6 ${samples[6].toFixed(1)}; batch ${batch})`);
    } finally {
      c.teardown?.();
    }
  }
  for (const t of live) (t as DeviceTensor).dispose();
}
void main();
