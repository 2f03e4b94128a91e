/**
 * safetensors reader (and a small writer) — the checkpoint format of Hugging
 * Face models. Layout: an 8-byte little-endian header length N, N bytes of
 * UTF-8 JSON `{ name: { dtype, shape, data_offsets: [begin, end] }, ...,
 * "__metadata__"?: { string: string } }`, then the data section; offsets are
 * relative to the start of the data section.
 *
 * Reads are lazy: opening parses and validates only the header; a tensor's
 * bytes are read when asked for. F32, F16 and BF16 load as Float32Array; any
 * other dtype is reported with a clear error when read.
 */
import * as fs from 'node:fs';
import type { Float32Tensor } from './tensor';

/** Headers larger than this are rejected (the reference implementation uses the same bound). */
export const MAX_HEADER_BYTES = 100_000_000;

const DTYPE_BYTES: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4, F32: 4, I64: 8, U64: 8, F64: 8,
};

export interface TensorInfo {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
  /** Absolute byte range in the file / buffer. */
  readonly begin: number;
  readonly end: number;
}

export class SafetensorsError extends RangeError {
  constructor(source: string, message: string) {
    super(`safetensors (${source}): ${message}`);
    this.name = 'RangeError';
  }
}

interface ByteSource {
  readonly size: number;
  readonly label: string;
  read(begin: number, end: number): Uint8Array;
  close(): void;
}

function fileSource(path: string): ByteSource {
  const fd = fs.openSync(path, 'r');
  const size = fs.fstatSync(fd).size;
  let open = true;
  return {
    size,
    label: path,
    read(begin, end) {
      if (!open) throw new SafetensorsError(path, 'the file was closed');
      const out = new Uint8Array(end - begin);
      let done = 0;
      while (done < out.length) {
        const n = fs.readSync(fd, out, done, out.length - done, begin + done);
        if (n === 0) throw new SafetensorsError(path, `unexpected end of file at byte ${begin + done}`);
        done += n;
      }
      return out;
    },
    close() {
      if (open) fs.closeSync(fd);
      open = false;
    },
  };
}

function bufferSource(buf: Uint8Array): ByteSource {
  return {
    size: buf.byteLength,
    label: 'buffer',
    read: (begin, end) => buf.subarray(begin, end),
    close() {},
  };
}

/** Half-precision (IEEE binary16) bits → float. */
function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** An open safetensors file or buffer. Close it when done (files hold a descriptor). */
export class SafetensorsFile {
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  readonly metadata: Readonly<Record<string, string>>;
  private readonly src: ByteSource;

  private constructor(src: ByteSource, tensors: Map<string, TensorInfo>, metadata: Record<string, string>) {
    this.src = src;
    this.tensors = tensors;
    this.metadata = metadata;
  }

  /** Parses and validates the header; tensor bytes are read lazily by `get`. */
  static open(source: string | Uint8Array): SafetensorsFile {
    if (typeof source !== 'string' && !(source instanceof Uint8Array)) {
      throw new TypeError('loadSafetensors: source must be a file path (string) or a Buffer/Uint8Array');
    }
    const src = typeof source === 'string' ? fileSource(source) : bufferSource(source);
    try {
      return SafetensorsFile.parse(src);
    } catch (e) {
      src.close();
      throw e;
    }
  }

  private static parse(src: ByteSource): SafetensorsFile {
    const fail = (msg: string): never => {
      throw new SafetensorsError(src.label, msg);
    };
    if (src.size < 8) fail(`too short for a header length (${src.size} bytes)`);
    const lenBytes = src.read(0, 8);
    const n = Number(new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true));
    if (n > MAX_HEADER_BYTES) fail(`header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
    if (8 + n > src.size) fail(`header length ${n} runs past the end of the data (${src.size} bytes): truncated?`);
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(src.read(8, 8 + n)));
    } catch (e) {
      fail(`header is not valid UTF-8 JSON (${(e as Error).message})`);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('header must be a JSON object');
    const dataStart = 8 + n;
    const dataLen = src.size - dataStart;
    const tensors = new Map<string, TensorInfo>();
    let metadata: Record<string, string> = {};
    for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('__metadata__ must be an object of strings');
        for (const [k, v] of Object.entries(raw as Record<string, unknown>))
          if (typeof v !== 'string') fail(`__metadata__.${k} must be a string`);
        metadata = raw as Record<string, string>;
        continue;
      }
      const t = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (typeof t !== 'object' || t === null) fail(`tensor '${name}' must be an object`);
      if (typeof t.dtype !== 'string' || !(t.dtype in DTYPE_BYTES)) fail(`tensor '${name}' has unknown dtype ${JSON.stringify(t.dtype)}`);
      const dtype = t.dtype as string;
      if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
        fail(`tensor '${name}' has an invalid shape ${JSON.stringify(t.shape)}`);
      const shape = t.shape as number[];
      const off = t.data_offsets;
      if (!Array.isArray(off) || off.length !== 2 || !off.every((o) => Number.isSafeInteger(o) && o >= 0))
        fail(`tensor '${name}' has invalid data_offsets ${JSON.stringify(off)}`);
      const [b, e] = off as number[];
      if (e < b) fail(`tensor '${name}' has data_offsets [${b}, ${e}] with end before begin`);
      if (e > dataLen) fail(`tensor '${name}' ends at byte ${e} of the data section, which has only ${dataLen}: truncated?`);
      const numel = shape.reduce((a, d) => a * d, 1);
      if (!Number.isSafeInteger(numel * DTYPE_BYTES[dtype])) fail(`tensor '${name}' is too large`);
      if (e - b !== numel * DTYPE_BYTES[dtype])
        fail(`tensor '${name}' (${dtype} [${shape.join(', ')}]) needs ${numel * DTYPE_BYTES[dtype]} bytes but data_offsets span ${e - b}`);
      tensors.set(name, { name, dtype, shape, begin: dataStart + b, end: dataStart + e });
    }
    // Tensors may not overlap (each byte belongs to at most one tensor).
    const sorted = [...tensors.values()].filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin);
    for (let i = 1; i < sorted.length; i++)
      if (sorted[i].begin < sorted[i - 1].end)
        fail(`tensors '${sorted[i - 1].name}' and '${sorted[i].name}' overlap`);
    return new SafetensorsFile(src, tensors, metadata);
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  /** Reads one tensor as float32 (F32, F16 and BF16). */
  get(name: string): Float32Tensor {
    const info = this.tensors.get(name);
    if (!info) throw new SafetensorsError(this.src.label, `no tensor named '${name}'`);
    const bytes = this.src.read(info.begin, info.end);
    const numel = info.shape.reduce((a, d) => a * d, 1);
    const out = new Float32Array(numel);
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    switch (info.dtype) {
      case 'F32':
        for (let i = 0; i < numel; i++) out[i] = dv.getFloat32(4 * i, true);
        break;
      case 'BF16': {
        const u32 = new Uint32Array(out.buffer);
        for (let i = 0; i < numel; i++) u32[i] = dv.getUint16(2 * i, true) << 16;
        break;
      }
      case 'F16':
        for (let i = 0; i < numel; i++) out[i] = f16ToF32(dv.getUint16(2 * i, true));
        break;
      default:
        throw new SafetensorsError(this.src.label, `tensor '${name}' has dtype ${info.dtype}; only F32, F16 and BF16 load as float32`);
    }
    return { data: out, shape: [...info.shape] };
  }

  close(): void {
    this.src.close();
  }
}

/** Opens a safetensors file (path) or buffer. */
export function loadSafetensors(source: string | Uint8Array): SafetensorsFile {
  return SafetensorsFile.open(source);
}

export interface TensorToSave {
  dtype?: 'F32' | 'BF16' | 'F16';
  shape: readonly number[];
  data: Float32Array;
}

function f32ToF16(v: number): number {
  const f = new Float32Array([v]);
  const x = new Uint32Array(f.buffer)[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

/**
 * Serialises tensors to safetensors bytes (F32 by default; BF16 rounds to
 * nearest even; F16 rounds to nearest even). Tensor order in the data section
 * follows `Object.keys(tensors)`.
 */
export function saveSafetensors(tensors: Record<string, TensorToSave>, metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const dtype = t.dtype ?? 'F32';
    const numel = t.shape.reduce((a, d) => a * d, 1);
    if (numel !== t.data.length) throw new RangeError(`saveSafetensors: tensor '${name}' has ${t.data.length} values but shape [${t.shape.join(', ')}] needs ${numel}`);
    let bytes: Uint8Array;
    if (dtype === 'F32') {
      bytes = new Uint8Array(numel * 4);
      const dv = new DataView(bytes.buffer);
      for (let i = 0; i < numel; i++) dv.setFloat32(4 * i, t.data[i], true);
    } else {
      bytes = new Uint8Array(numel * 2);
      const dv = new DataView(bytes.buffer);
      const u = new Uint32Array(t.data.buffer, t.data.byteOffset, numel);
      for (let i = 0; i < numel; i++) {
        let h: number;
        if (dtype === 'BF16') {
          const x = u[i];
          h = Number.isNaN(t.data[i]) ? 0x7fc0 : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
        } else {
          h = f32ToF16(t.data[i]);
        }
        dv.setUint16(2 * i, h & 0xffff, true);
      }
    }
    header[name] = { dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  // Pad the header with spaces to a multiple of 8 so the data section is aligned.
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = new TextEncoder().encode(JSON.stringify(header) + ' '.repeat(pad));
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let pos = 8 + json.length;
  for (const c of chunks) {
    out.set(c, pos);
    pos += c.length;
  }
  return out;
}
