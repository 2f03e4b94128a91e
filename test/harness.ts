/**
 * One harness for every op (in the spirit of PyTorch's OpInfo and ggml's
 * test-backend-ops): a family's test describes how to make sample inputs, how
 * to run the op (sync and async) and its float64 reference; the harness runs
 * each sample on every instruction set this CPU supports, at 1 and 2 threads,
 * sync and async, and checks
 *   - relative error ‖y − ref‖ / ‖ref‖ against the op's tolerance,
 *   - bitwise identity across thread counts and between sync and async.
 * Instruction sets compiled into the binary but not runnable here are reported
 * as skipped with the reason, never silently dropped.
 *
 * An op with several results returns `{ outputs: { name: typedArray } }` from
 * `run`/`runAsync` and the same names from `reference`: integer outputs (ids,
 * offsets, permutations) must equal the reference exactly, float outputs are
 * held to `tolerance` (a number, or one per output name), and every output
 * must be bitwise identical across threads and sync/async.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { info, setIsa, setNumThreads, getNumThreads, type IsaName } from '../lib/index';

export interface Sample<I> {
  /** Printed in failures: shapes and options. */
  label: string;
  inputs: I;
}

export type OutputArray = Float32Array | Float64Array | Int32Array;
/** Several named results of one op. */
export interface Outputs {
  outputs: Record<string, OutputArray>;
}
export type RunResult = Float32Array | { data: Float32Array } | Outputs;
export type RefResult = Float64Array | Float32Array | { outputs: Record<string, ArrayLike<number>> };

export interface OpSpec<I, P = I> {
  name: string;
  /** Sample inputs; deterministic (seeded). */
  samples(): Sample<I>[];
  /** Per-ISA preparation that must happen after the ISA is chosen (e.g. prepacking). */
  prepare?(inputs: I): P;
  run(prepared: P, inputs: I): RunResult;
  runAsync(prepared: P, inputs: I): Promise<RunResult>;
  reference(inputs: I): RefResult;
  /** Relative tolerance on ‖y − ref‖ / ‖ref‖ (per float output name, or one for all). */
  tolerance: number | Record<string, number>;
}

export function relError(y: ArrayLike<number>, ref: ArrayLike<number>): number {
  assert.equal(y.length, ref.length, `output length ${y.length} ≠ reference length ${ref.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < y.length; i++) {
    const d = y[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  if (!Number.isFinite(num)) return Infinity;
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

function bitsEqual(a: OutputArray, b: OutputArray): boolean {
  if (a.length !== b.length || a.constructor !== b.constructor) return false;
  const ua = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const ub = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) return false;
  return true;
}

function outputsOf(r: RunResult): Record<string, OutputArray> {
  if (r instanceof Float32Array) return { y: r.slice() };
  if ('outputs' in r) {
    const o: Record<string, OutputArray> = {};
    for (const [k, v] of Object.entries(r.outputs)) o[k] = v.slice();
    return o;
  }
  return { y: r.data.slice() };
}

function refOutputsOf(r: RefResult): Record<string, ArrayLike<number>> {
  if (r instanceof Float64Array || r instanceof Float32Array) return { y: r };
  return r.outputs;
}

/** First index where two integer arrays differ, or -1. */
function firstMismatch(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** Compares every named output with the reference; throws naming the first failure. */
export function compareOutputs(
  got: Record<string, OutputArray>,
  ref: Record<string, ArrayLike<number>>,
  tolerance: number | Record<string, number>,
  where: string,
): void {
  for (const [name, r] of Object.entries(ref)) {
    const y = got[name];
    assert.ok(y !== undefined, `${where}: output ${name} is missing`);
    if (y instanceof Int32Array) {
      const i = firstMismatch(y, r);
      assert.ok(
        i < 0,
        `${where}: ${name} differs from the reference at [${i}]: got ${y[i]}, want ${r[i]} (lengths ${y.length} vs ${r.length})`,
      );
    } else {
      const tol = typeof tolerance === 'number' ? tolerance : tolerance[name];
      assert.ok(tol !== undefined, `${where}: no tolerance for output ${name}`);
      const err = relError(y, r);
      assert.ok(err <= tol, `${where}: ${name} relative error ${err.toExponential(3)} > ${tol}`);
    }
  }
}

const ALL_ISAS: IsaName[] = ['scalar', 'avx2', 'avx512', 'neon'];

/** Instruction sets to test here, and the compiled ones that cannot run here with why. */
export function isaMatrix(): { run: IsaName[]; skipped: { isa: IsaName; reason: string }[] } {
  const i = info();
  const run = i.supportedIsas;
  const skipped = i.compiledIsas
    .filter((isa) => !run.includes(isa))
    .map((isa) => ({ isa, reason: `compiled into this binary but this CPU cannot run it (cpu: ${JSON.stringify(i.cpu)})` }));
  for (const isa of ALL_ISAS) {
    if (!i.compiledIsas.includes(isa) && !run.includes(isa)) {
      skipped.push({ isa, reason: `not an instruction set of this architecture (${process.arch})` });
    }
  }
  return { run, skipped };
}

/** Runs fn with the given ISA and thread count, restoring both afterwards. */
export async function withRuntime<T>(isa: IsaName, threads: number, fn: () => T | Promise<T>): Promise<T> {
  const before = { isa: info().isa, threads: getNumThreads() };
  setIsa(isa);
  setNumThreads(threads);
  try {
    return await fn();
  } finally {
    setIsa(before.isa);
    setNumThreads(before.threads);
  }
}

/** Registers the standard checks of one op. */
export function checkOp<I, P>(spec: OpSpec<I, P>): void {
  const { run, skipped } = isaMatrix();
  const samples = spec.samples();
  const refs = samples.map((s) => refOutputsOf(spec.reference(s.inputs)));
  for (const isa of run) {
    test(`${spec.name} [${isa}] matches the float64 reference; 1 = 2 threads; sync = async`, async () => {
      for (let si = 0; si < samples.length; si++) {
        const s = samples[si];
        const results: Record<string, OutputArray>[] = [];
        for (const threads of [1, 2]) {
          await withRuntime(isa, threads, async () => {
            const prepared = spec.prepare ? spec.prepare(s.inputs) : (s.inputs as unknown as P);
            const y = outputsOf(spec.run(prepared, s.inputs));
            const ya = outputsOf(await spec.runAsync(prepared, s.inputs));
            compareOutputs(y, refs[si], spec.tolerance, `${spec.name} [${isa}, ${threads} threads] ${s.label}`);
            for (const name of Object.keys(y)) {
              assert.ok(
                bitsEqual(y[name], ya[name]),
                `${spec.name} [${isa}, ${threads} threads] ${s.label}: async ${name} differs from sync`,
              );
            }
            results.push(y);
          });
        }
        for (const name of Object.keys(results[0])) {
          assert.ok(
            bitsEqual(results[0][name], results[1][name]),
            `${spec.name} [${isa}] ${s.label}: ${name} differs bitwise between 1 and 2 threads`,
          );
        }
      }
    });
  }
  for (const { isa, reason } of skipped) {
    test(`${spec.name} [${isa}]`, (t: TestContext) => {
      t.skip(`${isa}: ${reason}`);
    });
  }
}

/**
 * Bad-input checks: each case calls `call` with one argument mutated and must
 * throw the named error class with a message matching `message`.
 */
export interface BadCase {
  label: string;
  call: () => unknown;
  error: typeof TypeError | typeof RangeError;
  message: RegExp;
}

export function checkBadInputs(name: string, cases: BadCase[]): void {
  test(`${name}: every malformed argument throws a named TypeError/RangeError`, async () => {
    for (const c of cases) {
      let thrown: unknown = undefined;
      try {
        const r = c.call();
        if (r && typeof (r as Promise<unknown>).then === 'function') await r;
      } catch (e) {
        thrown = e;
      }
      assert.ok(thrown !== undefined, `${name}: ${c.label}: did not throw`);
      assert.ok(
        thrown instanceof c.error,
        `${name}: ${c.label}: expected ${c.error.name}, got ${(thrown as Error)?.constructor?.name}: ${(thrown as Error)?.message}`,
      );
      assert.match((thrown as Error).message, c.message, `${name}: ${c.label}: message does not name the problem`);
    }
  });
}
