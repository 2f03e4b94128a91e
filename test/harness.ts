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
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { info, setIsa, setNumThreads, getNumThreads, type IsaName } from '../lib/index';

export interface Sample<I> {
  /** Printed in failures: shapes and options. */
  label: string;
  inputs: I;
}

export interface OpSpec<I, P = I> {
  name: string;
  /** Sample inputs; deterministic (seeded). */
  samples(): Sample<I>[];
  /** Per-ISA preparation that must happen after the ISA is chosen (e.g. prepacking). */
  prepare?(inputs: I): P;
  run(prepared: P, inputs: I): Float32Array | { data: Float32Array };
  runAsync(prepared: P, inputs: I): Promise<Float32Array | { data: Float32Array }>;
  reference(inputs: I): Float64Array | Float32Array;
  /** Relative tolerance on ‖y − ref‖ / ‖ref‖. */
  tolerance: number;
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

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) return false;
  return true;
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

function dataOf(r: Float32Array | { data: Float32Array }): Float32Array {
  return r instanceof Float32Array ? r : r.data;
}

/** Registers the standard checks of one op. */
export function checkOp<I, P>(spec: OpSpec<I, P>): void {
  const { run, skipped } = isaMatrix();
  const samples = spec.samples();
  const refs = samples.map((s) => spec.reference(s.inputs));
  for (const isa of run) {
    test(`${spec.name} [${isa}] matches the float64 reference; 1 = 2 threads; sync = async`, async () => {
      for (let si = 0; si < samples.length; si++) {
        const s = samples[si];
        const results: Float32Array[] = [];
        for (const threads of [1, 2]) {
          await withRuntime(isa, threads, async () => {
            const prepared = spec.prepare ? spec.prepare(s.inputs) : (s.inputs as unknown as P);
            const y = dataOf(spec.run(prepared, s.inputs)).slice();
            const ya = dataOf(await spec.runAsync(prepared, s.inputs)).slice();
            const err = relError(y, refs[si]);
            assert.ok(
              err <= spec.tolerance,
              `${spec.name} [${isa}, ${threads} threads] ${s.label}: relative error ${err.toExponential(3)} > ${spec.tolerance}`,
            );
            assert.ok(bitsEqual(y, ya), `${spec.name} [${isa}, ${threads} threads] ${s.label}: async result differs from sync`);
            results.push(y);
          });
        }
        assert.ok(bitsEqual(results[0], results[1]), `${spec.name} [${isa}] ${s.label}: 1 and 2 threads differ bitwise`);
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
