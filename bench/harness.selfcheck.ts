/**
 * Self-check of the benchmark harness (not part of `npm test`):
 *
 *   node --import tsx --test bench/harness.selfcheck.ts
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QUICK, measureCase, renderCases, runSuite, saveResults, summarize, defineSuite } from './harness';

function busyWait(ms: number): void {
  const end = process.hrtime.bigint() + BigInt(Math.round(ms * 1e6));
  while (process.hrtime.bigint() < end);
}

test('summarize: median and p10/p90 interpolate', () => {
  const s = summarize([5, 1, 4, 2, 3], 1);
  assert.equal(s.median, 3);
  assert.equal(s.min, 1);
  assert.equal(s.max, 5);
  assert.ok(Math.abs(s.p10 - 1.4) < 1e-12);
  assert.ok(Math.abs(s.p90 - 4.6) < 1e-12);
  assert.equal(summarize([7, 9], 1).median, 8);
});

test('measureCase interleaves contenders, handles async ones, computes GFLOP/s and ratios', async () => {
  const order: string[] = [];
  const r = await measureCase(
    {
      name: 'synthetic',
      threads: 1,
      flops: 1e9,
      bytes: 1e9,
      contenders: [
        { name: 'fast', fn: () => { order.push('fast'); busyWait(1); } },
        { name: 'slow', fn: async () => { order.push('slow'); busyWait(2); await Promise.resolve(); } },
      ],
      ratios: [{ of: 'fast', vs: 'slow' }],
      columns: (c) => ({ double: c.median * 2 }),
    },
    { ...QUICK, minSamples: 6, maxSamples: 6, timeMs: 0, minSampleMs: 0, switchWarmup: 0 },
  );
  assert.equal(r.rounds, 6);
  const [fast, slow] = r.contenders;
  assert.equal(fast.n, 6);
  assert.equal(slow.n, 6);
  // busy waits end at an absolute time, so a sample is never shorter; on a
  // loaded machine it can be much longer, so only lower bounds are asserted
  assert.ok(fast.median >= 1, `fast median ${fast.median}`);
  assert.ok(slow.median >= 2, `slow median ${slow.median}`);
  assert.ok(Math.abs(fast.gflops! - 1e9 / (fast.median * 1e-3) / 1e9) < 1e-9);
  assert.ok(Math.abs(fast.gbps! - fast.gflops!) < 1e-9);
  assert.equal(fast.columns!.double, fast.median * 2);
  const ratio = r.ratios[0].speedup;
  assert.equal(ratio, slow.median / fast.median);
  assert.ok(fast.p10 <= fast.median && fast.median <= fast.p90);
  // sampling phase alternates: after warmup, no contender runs twice in a row
  // except across a rotation boundary (…fast | fast…)
  const sampled = order.slice(order.length - 12);
  for (let i = 0; i < 12; i += 2) assert.notEqual(sampled[i], sampled[i + 1]);
  assert.match(renderCases([r]), /\| synthetic \| 1 \| fast \|/);
});

test('inner calls per sample grow for microsecond contenders; switch warmup adds untimed calls', async () => {
  let calls = 0;
  const r = await measureCase(
    { name: 'tiny', threads: 1, contenders: [{ name: 'noop', fn: () => { calls++; } }] },
    { ...QUICK, warmupCalls: 5, warmupMs: 5, minSamples: 4, maxSamples: 4, timeMs: 0, minSampleMs: 0.5, switchWarmup: 3 },
  );
  const c = r.contenders[0];
  assert.ok(c.inner > 10, `inner ${c.inner}`);
  assert.equal(c.n, 4);
  assert.ok(calls >= 5 + 4 * (c.inner + 3));
});

test('saveResults merges families into latest.json and renders latest.md', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-'));
  const mk = (family: string, ms: number) =>
    defineSuite({
      family,
      title: `${family} title`,
      async run(h) {
        await h.case({ name: `${family}-case`, threads: 1, contenders: [{ name: 'a', fn: () => busyWait(ms) }] });
        h.note(`${family} note`);
      },
    });
  const timing = { ...QUICK, minSamples: 3, maxSamples: 3, timeMs: 0 };
  saveResults(await runSuite(mk('alpha', 0.2), { quick: true, timing }), dir);
  saveResults(await runSuite(mk('beta', 0.2), { quick: true, timing }), dir);
  saveResults(await runSuite(mk('alpha', 0.3), { quick: true, timing }), dir); // replaces alpha only
  const json = JSON.parse(readFileSync(join(dir, 'latest.json'), 'utf8'));
  assert.deepEqual(Object.keys(json.families).sort(), ['alpha', 'beta']);
  assert.equal(json.families.alpha.cases.length, 1);
  assert.equal(json.families.alpha.cases[0].contenders[0].n, 3);
  const md = readFileSync(join(dir, 'latest.md'), 'utf8');
  assert.match(md, /## alpha title/);
  assert.match(md, /## beta title/);
  assert.match(md, /- beta note/);
});
