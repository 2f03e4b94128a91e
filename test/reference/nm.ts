/**
 * Naive references for the N:M family, written from the format's definition
 * (lib/nm.ts) and PyTorch's documented CUTLASS metadata layout. They share no
 * code with the kernels or the native format code.
 */

export interface Parts {
  rows: number;
  cols: number;
  n: number;
  m: number;
  values: Float32Array;
  indices: Uint8Array;
}

export function indexBits(m: number): number {
  return Math.ceil(Math.log2(m));
}

export function keptPerRow(cols: number, n: number, m: number): number {
  return (cols / m) * n;
}

export function indexBytesPerRow(cols: number, n: number, m: number): number {
  return Math.ceil((keptPerRow(cols, n, m) * indexBits(m)) / 8);
}

/** Index j of a row's packed bit string (LSB-first). */
export function readIndex(row: Uint8Array, j: number, bits: number): number {
  let v = 0;
  for (let b = 0; b < bits; b++) {
    const p = j * bits + b;
    v |= ((row[p >> 3] >> (p & 7)) & 1) << b;
  }
  return v;
}

export function writeIndex(row: Uint8Array, j: number, bits: number, value: number): void {
  for (let b = 0; b < bits; b++) {
    const p = j * bits + b;
    if ((value >> b) & 1) row[p >> 3] |= 1 << (p & 7);
    else row[p >> 3] &= ~(1 << (p & 7));
  }
}

/** Dense float64 [rows, cols] of an N:M matrix. */
export function toDenseRef(p: Parts): Float64Array {
  const kept = keptPerRow(p.cols, p.n, p.m);
  const ib = indexBytesPerRow(p.cols, p.n, p.m);
  const bits = indexBits(p.m);
  const d = new Float64Array(p.rows * p.cols);
  for (let r = 0; r < p.rows; r++) {
    const row = p.indices.subarray(r * ib, (r + 1) * ib);
    for (let j = 0; j < kept; j++) {
      const col = Math.floor(j / p.n) * p.m + readIndex(row, j, bits);
      d[r * p.cols + col] = p.values[r * kept + j];
    }
  }
  return d;
}

/**
 * Magnitude pruning by sorting: per group, columns ordered by |w| descending
 * (NaN first), ties by column; the first n are kept.
 */
export function pruneRef(w: Float32Array, rows: number, cols: number, n: number, m: number): Parts {
  const kept = keptPerRow(cols, n, m);
  const ib = indexBytesPerRow(cols, n, m);
  const bits = indexBits(m);
  const values = new Float32Array(rows * kept);
  const indices = new Uint8Array(rows * ib);
  const mag = (v: number) => (Number.isNaN(v) ? Infinity : Math.abs(v));
  for (let r = 0; r < rows; r++) {
    const row = indices.subarray(r * ib, (r + 1) * ib);
    for (let g = 0; g < cols / m; g++) {
      const order = Array.from({ length: m }, (_, i) => i);
      order.sort((a, b) => {
        const va = w[r * cols + g * m + a];
        const vb = w[r * cols + g * m + b];
        const ma = mag(va), mb = mag(vb);
        if (ma !== mb) return mb - ma > 0 ? 1 : -1;
        // NaN vs inf: NaN ranks higher
        if (Number.isNaN(va) !== Number.isNaN(vb)) return Number.isNaN(va) ? -1 : 1;
        return a - b;
      });
      const keep = order.slice(0, n).sort((a, b) => a - b);
      keep.forEach((c, s) => {
        values[r * kept + g * n + s] = w[r * cols + g * m + c];
        writeIndex(row, g * n + s, bits, c);
      });
    }
  }
  return { rows, cols, n, m, values, indices };
}

/** dx [t, cols] = dy [t, rows] · W in float64. */
export function transposedRef(dy: Float32Array, t: number, dense: Float64Array, rows: number, cols: number): Float64Array {
  const dx = new Float64Array(t * cols);
  for (let i = 0; i < t; i++)
    for (let r = 0; r < rows; r++) {
      const g = dy[i * rows + r];
      for (let c = 0; c < cols; c++) dx[i * cols + c] += g * dense[r * cols + c];
    }
  return dx;
}

/**
 * Where CUTLASS's reordered metadata stores element (r, c) of the logical
 * [rows, cols/16] int16 metadata, following the steps PyTorch's
 * `_calculate_meta_reordering_scatter_offsets` documents for 16-bit metadata:
 * rows interleaved in bands of 32 (`r/32·32 + (r%8)·4 + (r%32)/8`), 2×2 blocks
 * swapped across the diagonal, then ColumnMajorInterleaved<2>.
 */
export function cutlassMetaOffsetRef(r: number, c: number, rows: number): number {
  let dr = Math.floor(r / 32) * 32 + (r % 8) * 4 + Math.floor((r % 32) / 8);
  let dc = c;
  const topright = dr % 2 === 0 && dc % 2 === 1 ? 1 : 0;
  const bottomleft = dr % 2 === 1 && dc % 2 === 0 ? 1 : 0;
  dr += topright - bottomleft;
  dc -= topright - bottomleft;
  return Math.floor(dc / 2) * rows * 2 + dr * 2 + (dc % 2);
}

/** fp16 bits → number (exact). */
export function halfToNumber(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** bf16 bits → number (exact). */
export function bf16ToNumber(h: number): number {
  const b = new DataView(new ArrayBuffer(4));
  b.setUint32(0, h << 16);
  return b.getFloat32(0);
}
