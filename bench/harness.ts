/**
 * Shared benchmark harness: every family's suite (bench/<family>.bench.ts)
 * measures cases through it.
 *
 * A case has several contenders (ours, the anchor, a variant...) timed side by
 * side in the same process and interleaved: each round takes one sample of
 * every contender, in a rotating order, so machine noise (other processes,
 * frequency changes, thermal state) lands on all of them alike and the ratios
 * stay meaningful on a busy machine. The thread count is pinned per case
 * (sparsekit's pool via setNumThreads; anchors are built by the suite with the
 * same count). Reported: median, p10/p90 of the per-call time, GFLOP/s and
 * GB/s from the case's flop and byte counts, and speed ratios between named
 * contenders (time of the baseline / time of the contender: > 1 means the
 * contender is faster).
 *
 * Why not tinybench's loop: tinybench (v6) runs one task's whole sampling loop
 * before the next task starts (`Bench.run` is sequential per task, and
 * concurrency mode runs iterations of the same task in parallel), so it cannot
 * interleave contenders sample by sample, which is the point here. The loop
 * below is plain `process.hrtime.bigint()` around each sample; it awaits only
 * contenders that return a promise, so synchronous calls are not charged a
 * microtask.
 */
import { writeFileSync, readFileSync, mkdirSync, existsSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { setNumThreads, getNumThreads, info, measureReadBandwidth } from '../lib/index';

// ---------------------------------------------------------------------------
// options

export interface TimingOptions {
  /** Untimed calls of each contender before sampling (at least this many). */
  warmupCalls: number;
  /** ...and keep warming up each contender until this much time went by. */
  warmupMs: number;
  /** Rounds (samples per contender) always taken, unless maxTimeMs runs out. */
  minSamples: number;
  /** Never more rounds than this. */
  maxSamples: number;
  /** Keep sampling until this much time went by (once minSamples are in). */
  timeMs: number;
  /** Hard ceiling per case: stop once this is spent and at least 3 rounds are in. */
  maxTimeMs: number;
  /**
   * A sample is `inner` back-to-back calls timed together, with `inner` chosen
   * from the warmup so a sample lasts at least this long (timer resolution
   * and loop overhead stay negligible for microsecond kernels).
   */
  minSampleMs: number;
  /**
   * Untimed calls of a contender right before each of its samples (after the
   * switch from another contender). 0 measures what the interleaving leaves
   * (caches and other pools' spinning threads as the previous contender left
   * them); 1 measures steady state.
   */
  switchWarmup: number;
  /**
   * Skip the switch warmup for contenders whose call takes longer than this:
   * what it guards against (another pool's threads still spinning, a few MB
   * of cache) costs a bounded time, negligible against a long call, while the
   * extra call would double the case's run time.
   */
  switchWarmupMaxMs: number;
}

export const FULL: TimingOptions = {
  warmupCalls: 2,
  warmupMs: 200,
  minSamples: 7,
  maxSamples: 400,
  timeMs: 3000,
  maxTimeMs: 20000,
  minSampleMs: 2,
  switchWarmup: 1,
  switchWarmupMaxMs: 100,
};

export const QUICK: TimingOptions = {
  warmupCalls: 1,
  warmupMs: 30,
  minSamples: 3,
  maxSamples: 50,
  timeMs: 300,
  maxTimeMs: 2500,
  minSampleMs: 1,
  switchWarmup: 1,
  switchWarmupMaxMs: 100,
};

/** Quick mode: `BENCH_QUICK=1`, or `--quick` on the command line. */
export function quickMode(): boolean {
  const env = process.env.BENCH_QUICK;
  return (env !== undefined && env !== '' && env !== '0') || process.argv.includes('--quick');
}

/** Thread counts to run: `BENCH_THREADS=1,2` overrides the suite's default list. */
export function threadList(defaults: number[]): number[] {
  const env = process.env.BENCH_THREADS;
  if (!env) return defaults;
  const list = env.split(',').map(Number);
  if (list.some((n) => !Number.isInteger(n) || n < 1)) throw new RangeError(`BENCH_THREADS: bad list '${env}'`);
  return list;
}

/**
 * The decode bound's yardstick: the rate (GB/s) at which `threads` pool
 * threads stream memory, measured now in this process (median of 9 passes over
 * 256 MB, `measureReadBandwidth`), or BENCH_MEM_GBPS when set. The machine's
 * bandwidth drifts (shared host: 41–94 GB/s seen on one 2-core VM within an
 * hour), so a decode case measures it just before and just after its timing
 * ({@link readBoundColumn}) rather than trusting a constant.
 */
export function readBoundGBps(threads: number): number {
  const env = process.env.BENCH_MEM_GBPS;
  if (env) {
    const v = Number(env);
    if (!(v > 0)) throw new RangeError(`BENCH_MEM_GBPS: bad value '${env}'`);
    return v;
  }
  const was = getNumThreads();
  setNumThreads(threads);
  try {
    return measureReadBandwidth({ megabytes: 256, passes: 9 }).medianGBps;
  } finally {
    setNumThreads(was);
  }
}

/**
 * Column `vs read bound` for a decode case that reads `bytes` of weights:
 * time ÷ (bytes at the read rate), the rate being the mean of one measurement
 * taken now (before the case) and one when the column is first computed
 * (after its timing). `rate()` gives the rate used, for the case's note.
 */
export function readBoundColumn(bytes: number, threads: number, skip: (r: ContenderResult) => boolean = () => false) {
  const before = readBoundGBps(threads);
  let gbps: number | undefined;
  const rate = () => (gbps ??= (before + readBoundGBps(threads)) / 2);
  const column = (r: ContenderResult): Record<string, string | number> =>
    skip(r) ? {} : { 'vs read bound': (r.median * 1e-3) / (bytes / (rate() * 1e9)) };
  return { column, rate };
}

/** Keeps the items whose key is listed in env var `name` (comma separated), or all if unset. */
export function filterByEnv<T>(name: string, items: T[], key: (t: T) => string): T[] {
  const env = process.env[name];
  if (!env) return items;
  const want = env.split(',').map((s) => s.trim());
  const out = items.filter((t) => want.includes(key(t)));
  if (out.length === 0) throw new RangeError(`${name}: none of '${env}' is among ${items.map(key).join(', ')}`);
  return out;
}

export function timingFromEnv(): TimingOptions {
  const base = { ...(quickMode() ? QUICK : FULL) };
  // BENCH_TIME_MS / BENCH_MAX_TIME_MS / BENCH_MIN_SAMPLES override single knobs
  const num = (k: string) => (process.env[k] !== undefined ? Number(process.env[k]) : undefined);
  base.timeMs = num('BENCH_TIME_MS') ?? base.timeMs;
  base.maxTimeMs = num('BENCH_MAX_TIME_MS') ?? base.maxTimeMs;
  base.minSamples = num('BENCH_MIN_SAMPLES') ?? base.minSamples;
  base.switchWarmup = num('BENCH_SWITCH_WARMUP') ?? base.switchWarmup;
  return base;
}

// ---------------------------------------------------------------------------
// cases

export interface Contender {
  /** Short, stable name (used in ratios and in the JSON): 'sparsekit', 'onnxruntime'... */
  name: string;
  /** One call. May return a promise (awaited). Should not allocate its output. */
  fn: () => unknown;
}

export interface RatioSpec {
  /** Contender whose speed is reported. */
  of: string;
  /** Contender it is compared with: ratio = time(vs) / time(of), > 1 means `of` is faster. */
  vs: string;
}

export interface CaseSpec {
  /** Row label, e.g. '512×1024×4096'. */
  name: string;
  /** Parameters recorded in the JSON (shape, threads...). */
  params?: Record<string, number | string | boolean>;
  /** Thread count pinned for this case (sparsekit pool). Anchors must be built with the same. */
  threads: number;
  /** Floating-point operations per call (for GFLOP/s). */
  flops?: number;
  /** Bytes per call that bound the kernel (for GB/s), e.g. the weight read once. */
  bytes?: number;
  contenders: Contender[];
  ratios?: RatioSpec[];
  /** Extra columns per contender, computed from its stats. */
  columns?: (r: ContenderResult) => Record<string, string | number>;
  /** Free-form notes recorded with the case (e.g. a correctness check). */
  notes?: string[];
  /** Overrides of the suite's timing options for this case. */
  timing?: Partial<TimingOptions>;
}

export interface Stats {
  /** Per-call time in ms. */
  median: number;
  p10: number;
  p90: number;
  mean: number;
  min: number;
  max: number;
  /** Samples taken. */
  n: number;
  /** Calls per sample. */
  inner: number;
}

export interface ContenderResult extends Stats {
  name: string;
  gflops?: number;
  gbps?: number;
  columns?: Record<string, string | number>;
}

export interface CaseResult {
  name: string;
  params: Record<string, number | string | boolean>;
  threads: number;
  flops?: number;
  bytes?: number;
  contenders: ContenderResult[];
  ratios: { of: string; vs: string; speedup: number }[];
  notes: string[];
  rounds: number;
  wallMs: number;
  /** 1-minute load average when the case started and ended (how busy the machine was). */
  load: [number, number];
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

export function summarize(samplesMs: number[], inner: number): Stats {
  const s = [...samplesMs].sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / (s.length || 1);
  return {
    median: quantile(s, 0.5),
    p10: quantile(s, 0.1),
    p90: quantile(s, 0.9),
    mean,
    min: s[0],
    max: s[s.length - 1],
    n: s.length,
    inner,
  };
}

const now = () => process.hrtime.bigint();
const msSince = (t0: bigint) => Number(now() - t0) / 1e6;

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return typeof v === 'object' && v !== null && typeof (v as { then?: unknown }).then === 'function';
}

interface Runner {
  c: Contender;
  async: boolean;
  inner: number;
  /** Untimed calls after each switch to this contender. */
  switchCalls: number;
  samples: number[];
}

async function callN(r: Runner, n: number): Promise<void> {
  const fn = r.c.fn;
  if (r.async) for (let i = 0; i < n; i++) await fn();
  else for (let i = 0; i < n; i++) fn();
}

/** Runs one case: warmup, then interleaved rounds until the time/sample budget is met. */
export async function measureCase(spec: CaseSpec, base: TimingOptions): Promise<CaseResult> {
  const t = { ...base, ...spec.timing };
  setNumThreads(spec.threads);
  const load0 = loadavg()[0];
  const caseStart = now();

  // warmup: also detects async contenders and sizes `inner`
  const runners: Runner[] = [];
  for (const c of spec.contenders) {
    const r: Runner = { c, async: false, inner: 1, switchCalls: 0, samples: [] };
    const t0 = now();
    let calls = 0;
    let firstMs = 0;
    do {
      const c0 = now();
      const v = c.fn();
      if (isThenable(v)) {
        r.async = true;
        await v;
      }
      const dt = msSince(c0);
      if (calls === 0) firstMs = dt;
      calls++;
    } while (calls < t.warmupCalls || (msSince(t0) < t.warmupMs && calls < 10_000));
    // per-call estimate: average over the warmup without the first (cold) call
    const est = calls > 1 ? (msSince(t0) - firstMs) / (calls - 1) : firstMs;
    r.inner = Math.max(1, Math.ceil(t.minSampleMs / Math.max(est, 1e-6)));
    r.switchCalls = est <= t.switchWarmupMaxMs ? t.switchWarmup : 0;
    runners.push(r);
  }

  // interleaved rounds
  const sampleStart = now();
  let rounds = 0;
  for (;;) {
    const k = runners.length;
    for (let j = 0; j < k; j++) {
      const r = runners[(rounds + j) % k]; // rotate who goes first
      if (r.switchCalls > 0) await callN(r, r.switchCalls);
      const t0 = now();
      await callN(r, r.inner);
      r.samples.push(msSince(t0) / r.inner);
    }
    rounds++;
    const elapsed = msSince(sampleStart);
    if (rounds >= t.maxSamples) break;
    if (rounds >= t.minSamples && elapsed >= t.timeMs) break;
    if (rounds >= 3 && elapsed >= t.maxTimeMs) break;
  }

  const results: ContenderResult[] = runners.map((r) => {
    const st = summarize(r.samples, r.inner);
    const res: ContenderResult = { name: r.c.name, ...st };
    if (spec.flops) res.gflops = spec.flops / (st.median * 1e-3) / 1e9;
    if (spec.bytes) res.gbps = spec.bytes / (st.median * 1e-3) / 1e9;
    return res;
  });
  for (const res of results) if (spec.columns) res.columns = spec.columns(res);
  const byName = new Map(results.map((r) => [r.name, r]));
  const ratios = (spec.ratios ?? []).map(({ of, vs }) => {
    const a = byName.get(of);
    const b = byName.get(vs);
    if (!a || !b) throw new Error(`bench: ratio ${of}/${vs} names an unknown contender in case ${spec.name}`);
    return { of, vs, speedup: b.median / a.median };
  });
  return {
    name: spec.name,
    params: spec.params ?? {},
    threads: spec.threads,
    flops: spec.flops,
    bytes: spec.bytes,
    contenders: results,
    ratios,
    notes: spec.notes ?? [],
    rounds,
    wallMs: msSince(caseStart),
    load: [load0, loadavg()[0]],
  };
}

// ---------------------------------------------------------------------------
// formatting

export function fmt(v: number | undefined, digits = 3): string {
  if (v === undefined || !Number.isFinite(v)) return '–';
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a >= 100) return v.toFixed(1);
  if (a >= 10) return v.toFixed(2);
  if (a >= 0.001) return v.toPrecision(digits);
  return v.toExponential(2);
}

const LEFT_ALIGNED = new Set(['case', 'contender', 'speed ratio']);

function mdTable(header: string[], rows: string[][]): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  return [
    `| ${header.map(esc).join(' | ')} |`,
    `| ${header.map((h) => (LEFT_ALIGNED.has(h) ? ':---' : '---:')).join(' | ')} |`,
    ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`),
  ].join('\n');
}

/** One row per contender; a case's ratios show on the row of the contender they are about. */
export function renderCases(cases: CaseResult[]): string {
  const hasFlops = cases.some((c) => c.flops);
  const hasBytes = cases.some((c) => c.bytes);
  const extraCols: string[] = [];
  for (const c of cases)
    for (const r of c.contenders) for (const k of Object.keys(r.columns ?? {})) if (!extraCols.includes(k)) extraCols.push(k);
  const header = ['case', 'threads', 'contender', 'median ms', 'p10–p90 ms'];
  if (hasFlops) header.push('GFLOP/s');
  if (hasBytes) header.push('GB/s');
  header.push(...extraCols, 'speed ratio', 'n');
  const rows: string[][] = [];
  for (const c of cases) {
    c.contenders.forEach((r, i) => {
      const row = [i === 0 ? c.name : '', i === 0 ? String(c.threads) : '', r.name, fmt(r.median), `${fmt(r.p10)}–${fmt(r.p90)}`];
      if (hasFlops) row.push(fmt(r.gflops));
      if (hasBytes) row.push(fmt(r.gbps));
      for (const k of extraCols) {
        const v = r.columns?.[k];
        row.push(v === undefined ? '' : typeof v === 'number' ? fmt(v) : v);
      }
      const ratios = c.ratios.filter((x) => x.of === r.name).map((x) => `${x.speedup.toFixed(2)}× vs ${x.vs}`);
      row.push(ratios.join(', '), `${r.n}×${r.inner}`);
      rows.push(row);
    });
  }
  return mdTable(header, rows);
}

// ---------------------------------------------------------------------------
// suites and results files

export const RESULTS_DIR = join(__dirname, 'results');

export interface SuiteContext {
  /** True in quick mode: suites may also trim their shape list. */
  quick: boolean;
  timing: TimingOptions;
  /** Measures a case, prints a progress line to stderr, and records it. */
  case(spec: CaseSpec): Promise<CaseResult>;
  /** A line for the suite's report (printed under its table, saved in the JSON). */
  note(line: string): void;
  /** Recorded with the suite in the JSON (anchor versions, settings...). */
  meta: Record<string, unknown>;
}

export interface Suite {
  /** Family name: the key in latest.json, and what `npm run bench -- <filter>` matches. */
  family: string;
  title: string;
  /** Description of what is measured and how (goes under the title). */
  description?: string;
  run(ctx: SuiteContext): Promise<void>;
}

export interface SuiteResult {
  family: string;
  title: string;
  description?: string;
  quick: boolean;
  timing: TimingOptions;
  startedAt: string;
  wallMs: number;
  meta: Record<string, unknown>;
  notes: string[];
  cases: CaseResult[];
  markdown: string;
}

/** A suite file exports its suite as default: `export default defineSuite({...})`. */
export function defineSuite(s: Suite): Suite {
  return s;
}

export function machineInfo(): Record<string, unknown> {
  const sk = info();
  return {
    cpu: cpus()[0]?.model ?? 'unknown',
    logicalCpus: cpus().length,
    memGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    sparsekit: { version: sk.version, isa: sk.isa, kernels: sk.kernels, compiledIsas: sk.compiledIsas },
  };
}

export async function runSuite(suite: Suite, opts: { quick?: boolean; timing?: TimingOptions } = {}): Promise<SuiteResult> {
  const quick = opts.quick ?? quickMode();
  const timing = opts.timing ?? timingFromEnv();
  const cases: CaseResult[] = [];
  const notes: string[] = [];
  const meta: Record<string, unknown> = {};
  const startedAt = new Date().toISOString();
  const t0 = now();
  const threads0 = info().threads;
  const ctx: SuiteContext = {
    quick,
    timing,
    meta,
    note: (l) => notes.push(l),
    async case(spec) {
      const r = await measureCase(spec, timing);
      cases.push(r);
      const parts = r.contenders.map((c) => `${c.name} ${fmt(c.median)} ms`);
      const rat = r.ratios.map((x) => `${x.of}/${x.vs} ${x.speedup.toFixed(2)}×`);
      process.stderr.write(
        `  [${suite.family}] ${r.name} t=${r.threads}: ${parts.join(', ')}${rat.length ? ' | ' + rat.join(', ') : ''} (${r.rounds} rounds, ${(r.wallMs / 1000).toFixed(1)} s, load ${r.load[0].toFixed(1)})\n`,
      );
      return r;
    },
  };
  process.stderr.write(`[${suite.family}] ${suite.title}${quick ? ' (quick)' : ''}\n`);
  try {
    await suite.run(ctx);
  } finally {
    setNumThreads(threads0);
  }
  const wallMs = msSince(t0);
  const md = [
    `## ${suite.title}`,
    '',
    ...(suite.description ? [suite.description, ''] : []),
    renderCases(cases),
    '',
    ...notes.map((n) => `- ${n}`),
    ...(notes.length ? [''] : []),
    `_${startedAt}, ${(wallMs / 1000).toFixed(0)} s${quick ? ', quick mode' : ''}, 1-min load average ${loadRange(cases)} on ${cpus().length} CPUs; medians of interleaved samples; n = samples×calls per sample._`,
  ].join('\n');
  return { family: suite.family, title: suite.title, description: suite.description, quick, timing, startedAt, wallMs, meta, notes, cases, markdown: md };
}

function loadRange(cases: CaseResult[]): string {
  const l = cases.flatMap((c) => c.load);
  if (l.length === 0) return '–';
  return `${Math.min(...l).toFixed(1)}–${Math.max(...l).toFixed(1)}`;
}

interface ResultsFile {
  updatedAt: string;
  machine: Record<string, unknown>;
  families: Record<string, SuiteResult & { machine: Record<string, unknown> }>;
}

/**
 * Merges a suite's results into bench/results/latest.json (replacing that
 * family only, so suites can run separately) and rewrites latest.md from all
 * families in the file.
 */
export function saveResults(res: SuiteResult, dir = RESULTS_DIR): void {
  mkdirSync(dir, { recursive: true });
  const jsonPath = join(dir, 'latest.json');
  let file: ResultsFile = { updatedAt: '', machine: {}, families: {} };
  if (existsSync(jsonPath)) {
    try {
      const prev = JSON.parse(readFileSync(jsonPath, 'utf8')) as ResultsFile;
      if (prev && typeof prev.families === 'object') file = prev;
    } catch {
      process.stderr.write(`bench: ${jsonPath} is not valid JSON; starting a new one\n`);
    }
  }
  const machine = machineInfo();
  file.updatedAt = new Date().toISOString();
  file.machine = machine;
  file.families[res.family] = { ...res, machine };
  writeFileSync(jsonPath, JSON.stringify(file, null, 2) + '\n');

  const m = machine as { cpu: string; logicalCpus: number; node: string; sparsekit: { version: string; isa: string } };
  const md = [
    '# sparsekit benchmarks',
    '',
    `Machine: ${m.cpu}, ${m.logicalCpus} logical CPUs, Node ${m.node}, sparsekit ${m.sparsekit.version} (${m.sparsekit.isa}). Written by \`npm run bench\`; each family section comes from its latest run.`,
    '',
    ...Object.values(file.families)
      .sort((a, b) => a.family.localeCompare(b.family))
      .map((f) => f.markdown + '\n'),
  ].join('\n');
  writeFileSync(join(dir, 'latest.md'), md);
}
