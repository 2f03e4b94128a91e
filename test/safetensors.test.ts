import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { loadSafetensors, saveSafetensors, MAX_HEADER_BYTES } from '../lib/index';
import { Rng } from './reference/rng';

function withHeader(header: unknown, data: Uint8Array = new Uint8Array(0), lenOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lenOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

test('safetensors: F32 / BF16 / F16 round trip, metadata, lazy reads from a file', () => {
  const rng = new Rng(3);
  const a = rng.floats(6 * 7);
  const b = Float32Array.from([1, -2.5, 3.140625, 0, -0, 65504, 1e-3, 0.1]);
  const bytes = saveSafetensors(
    { 'a.weight': { shape: [6, 7], data: a }, b16: { dtype: 'BF16', shape: [8], data: b }, h16: { dtype: 'F16', shape: [2, 4], data: b } },
    { format: 'pt' },
  );
  const f = loadSafetensors(bytes);
  assert.deepEqual(f.metadata, { format: 'pt' });
  assert.deepEqual([...f.tensors.keys()], ['a.weight', 'b16', 'h16']);
  assert.deepEqual(Array.from(f.get('a.weight').data), Array.from(a));
  assert.deepEqual(f.get('a.weight').shape, [6, 7]);
  // Values exactly representable in bf16/f16 survive; others round to nearest.
  const bf = f.get('b16').data;
  assert.deepEqual(Array.from(bf.subarray(0, 5)), [1, -2.5, 3.140625, 0, -0]);
  assert.ok(Math.abs(bf[7] - 0.1) < 0.1 * 2 ** -8);
  const hf = f.get('h16').data;
  assert.equal(hf[5], 65504);
  assert.ok(Math.abs(hf[6] - 1e-3) < 1e-3 * 2 ** -10);
  assert.throws(() => f.get('missing'), /no tensor named 'missing'/);

  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'sk-st-')), 'm.safetensors');
  fs.writeFileSync(file, bytes);
  const g = loadSafetensors(file);
  assert.deepEqual(Array.from(g.get('a.weight').data), Array.from(a));
  g.close();
  assert.throws(() => g.get('a.weight'), /closed/);
});

test('safetensors: data alignment padding and header header-only parse of a big declared tensor is lazy', () => {
  // A header that declares a tensor whose bytes are all present but never read.
  const data = new Uint8Array(4 * 1000);
  const bytes = withHeader({ big: { dtype: 'F32', shape: [1000], data_offsets: [0, 4000] } }, data);
  const f = loadSafetensors(bytes);
  assert.equal(f.tensors.get('big')!.end - f.tensors.get('big')!.begin, 4000);
});

test('safetensors: malformed files are rejected with a clear RangeError', () => {
  const f32 = (shape: number[], offs: [number, number]) => ({ dtype: 'F32', shape, data_offsets: offs });
  const cases: [string, Uint8Array, RegExp][] = [
    ['empty', new Uint8Array(0), /too short for a header length/],
    ['oversized header length', withHeader({}, new Uint8Array(0), BigInt(MAX_HEADER_BYTES + 1)), /exceeds the 100000000-byte limit/],
    ['header longer than file', withHeader({}, new Uint8Array(0), 1000n), /runs past the end of the data.*truncated/],
    ['header not JSON', withHeader('{"a": '), /not valid UTF-8 JSON/],
    ['header an array', withHeader([1, 2]), /header must be a JSON object/],
    ['unknown dtype', withHeader({ t: { dtype: 'F128', shape: [1], data_offsets: [0, 16] } }, new Uint8Array(16)), /unknown dtype "F128"/],
    ['negative dim', withHeader({ t: f32([-1], [0, 4]) }, new Uint8Array(4)), /invalid shape/],
    ['offsets not two numbers', withHeader({ t: { dtype: 'F32', shape: [1], data_offsets: [0] } }, new Uint8Array(4)), /invalid data_offsets/],
    ['end before begin', withHeader({ t: f32([0], [4, 0]) }, new Uint8Array(4)), /end before begin/],
    ['out of range (truncated data)', withHeader({ t: f32([4], [0, 16]) }, new Uint8Array(8)), /ends at byte 16 of the data section, which has only 8: truncated/],
    ['size mismatch', withHeader({ t: f32([3], [0, 16]) }, new Uint8Array(16)), /needs 12 bytes but data_offsets span 16/],
    ['overlap', withHeader({ a: f32([2], [0, 8]), b: f32([2], [4, 12]) }, new Uint8Array(12)), /tensors 'a' and 'b' overlap/],
    ['metadata not strings', withHeader({ __metadata__: { a: 1 } }), /__metadata__\.a must be a string/],
  ];
  for (const [label, bytes, re] of cases) {
    assert.throws(() => loadSafetensors(bytes), (e: unknown) => e instanceof RangeError && re.test((e as Error).message), label);
  }
  assert.throws(() => loadSafetensors(42 as never), TypeError);
  const i32 = withHeader({ t: { dtype: 'I32', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4));
  assert.throws(() => loadSafetensors(i32).get('t'), /dtype I32; only F32, F16 and BF16 load as float32/);
});

test('safetensors: fuzzed headers never crash and never read out of bounds (fast-check)', () => {
  const entry = fc.record({
    dtype: fc.oneof(fc.constantFrom('F32', 'BF16', 'F16', 'I8', 'F64'), fc.string()),
    shape: fc.array(fc.oneof(fc.nat(6), fc.integer({ min: -3, max: 3 }), fc.double()), { maxLength: 3 }),
    data_offsets: fc.oneof(fc.tuple(fc.nat(64), fc.nat(64)), fc.array(fc.anything(), { maxLength: 3 })),
  });
  fc.assert(
    fc.property(fc.dictionary(fc.string({ maxLength: 6 }), fc.oneof(entry, fc.anything())), fc.nat(64), fc.option(fc.bigInt({ min: 0n, max: 1n << 63n })), (hdr, dataLen, len) => {
      const bytes = withHeader(hdr, new Uint8Array(dataLen), len ?? undefined);
      try {
        const f = loadSafetensors(bytes);
        for (const name of f.tensors.keys()) {
          try {
            const t = f.get(name);
            assert.equal(t.data.length, t.shape.reduce((a, d) => a * d, 1));
          } catch (e) {
            if (!(e instanceof RangeError)) throw e;
          }
        }
        return true;
      } catch (e) {
        return e instanceof RangeError;
      }
    }),
    { numRuns: 2000 },
  );
});

// An independent writer (Debian's python3 + numpy, outside this package) cross-checks the reader.
const PY = '/usr/bin/python3';
const hasNumpy = fs.existsSync(PY) && spawnSync(PY, ['-c', 'import numpy'], { stdio: 'ignore' }).status === 0;
test('safetensors: reads a file written by an independent writer (python3 + numpy)', (t) => {
  if (!hasNumpy) {
    t.skip('Debian python3-numpy is not installed (apt-get install python3-numpy; .ci/run installs it)');
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sk-py-'));
  const file = path.join(dir, 'py.safetensors');
  const script = `
import json, struct, numpy as np
a = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5) / 3
b = np.array([1.5, -2.0, 0.15625], dtype=np.float32)
bf = (b.view(np.uint32) >> 16).astype(np.uint16)
h = np.array([0.5, -3.0, 1000.0, 2.0**-14], dtype=np.float16)
blobs = [("model.layers.0.mlp.gate.weight", "F32", a.shape, a.tobytes()), ("bias", "BF16", b.shape, bf.tobytes()), ("half", "F16", h.shape, h.tobytes())]
hdr, off, data = {"__metadata__": {"writer": "numpy"}}, 0, b""
for name, dt, shape, raw in blobs:
    hdr[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
    off += len(raw); data += raw
j = json.dumps(hdr).encode()
open(${JSON.stringify(file)}, "wb").write(struct.pack("<Q", len(j)) + j + data)
`;
  const r = spawnSync(PY, ['-c', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const f = loadSafetensors(file);
  assert.deepEqual(f.metadata, { writer: 'numpy' });
  const a = f.get('model.layers.0.mlp.gate.weight');
  assert.deepEqual(a.shape, [3, 4]);
  for (let i = 0; i < 12; i++) assert.equal(a.data[i], Math.fround((i - 5.5) / 3));
  assert.deepEqual(Array.from(f.get('bias').data), [1.5, -2, 0.15625]);
  assert.deepEqual(Array.from(f.get('half').data), [0.5, -3, 1000, 2 ** -14]);
  f.close();
});
