/**
 * `npm run bench` — runs every bench/*.bench.ts suite (found by name, so a new
 * family only adds a file), prints each suite's markdown table to stdout and
 * merges its results into bench/results/latest.json and latest.md.
 *
 *   npm run bench                     all suites, full timing (a few minutes)
 *   npm run bench -- dense            only suites whose family or file name contains "dense"
 *   npm run bench -- --quick          short timing (also: BENCH_QUICK=1)
 *   npm run bench -- --list           list the suites and exit
 *   npm run bench -- --no-save        do not touch bench/results
 *
 * Timing knobs (env): BENCH_TIME_MS, BENCH_MAX_TIME_MS, BENCH_MIN_SAMPLES,
 * BENCH_SWITCH_WARMUP (see TimingOptions in harness.ts).
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { machineInfo, quickMode, runSuite, saveResults, type Suite } from './harness';

function isSuite(v: unknown): v is Suite {
  return typeof v === 'object' && v !== null && typeof (v as Suite).family === 'string' && typeof (v as Suite).run === 'function';
}

async function loadSuite(file: string): Promise<Suite> {
  const mod = (await import(join(__dirname, file))) as Record<string, unknown>;
  // CJS/ESM interop may nest the default export once
  for (const cand of [mod.default, (mod.default as Record<string, unknown> | undefined)?.default, mod.suite]) {
    if (isSuite(cand)) return cand;
  }
  throw new Error(`bench/${file} must \`export default defineSuite({ family, title, run })\``);
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  const filters = args.filter((a) => !a.startsWith('-'));
  const files = readdirSync(__dirname)
    .filter((f) => f.endsWith('.bench.ts'))
    .sort();
  // Load only the files a filter names when some do: a suite's imports (onnxruntime-node for
  // the CPU families) need not exist where another runs (bench/gpu-check.sh: cuda alone).
  const named = args.includes('--list') ? [] : files.filter((f) => filters.some((flt) => f.includes(flt)));
  const suites: { file: string; suite: Suite }[] = [];
  for (const file of named.length ? named : files) suites.push({ file, suite: await loadSuite(file) });
  const chosen = suites.filter(
    ({ file, suite }) => filters.length === 0 || filters.some((f) => suite.family.includes(f) || file.includes(f)),
  );

  if (args.includes('--list')) {
    for (const { file, suite } of suites) console.log(`${suite.family.padEnd(12)} ${file}  ${suite.title}`);
    return 0;
  }
  if (chosen.length === 0) {
    console.error(`bench: no suite matches ${filters.join(', ')} (have: ${suites.map((s) => s.suite.family).join(', ')})`);
    return 1;
  }

  const m = machineInfo() as { cpu: string; logicalCpus: number; node: string; sparsekit: { isa: string } };
  console.error(
    `bench: ${chosen.map((s) => s.suite.family).join(', ')}${quickMode() ? ' (quick)' : ''} on ${m.cpu}, ${m.logicalCpus} CPUs, Node ${m.node}, sparsekit ${m.sparsekit.isa}`,
  );
  let failed = 0;
  for (const { suite } of chosen) {
    try {
      const res = await runSuite(suite);
      console.log(res.markdown + '\n');
      if (!args.includes('--no-save')) saveResults(res);
    } catch (e) {
      failed++;
      console.error(`bench: suite ${suite.family} failed:`, e);
    }
  }
  if (!args.includes('--no-save')) console.error('bench: results in bench/results/latest.json and latest.md');
  return failed ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    console.error(e);
    process.exitCode = 1;
  },
);
