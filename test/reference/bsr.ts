/**
 * Naive references for the block-sparse format and products, written from the
 * definitions (float64 accumulation), sharing no code with the kernels or the
 * native format helpers.
 */
import { activate, type Act } from './dense';

export interface BsrParts {
  shape: readonly number[];
  blockSize: readonly number[];
  rowPtr: Int32Array;
  colIdx: Int32Array;
  values: Float32Array;
}

/** Visits every stored element: (row, col, value). */
function forEachStored(p: BsrParts, f: (r: number, c: number, v: number) => void): void {
  const [br, bc] = p.blockSize;
  const nbr = p.shape[0] / br;
  for (let R = 0; R < nbr; R++) {
    for (let j = p.rowPtr[R]; j < p.rowPtr[R + 1]; j++) {
      const c0 = p.colIdx[j] * bc;
      for (let i = 0; i < br; i++)
        for (let kk = 0; kk < bc; kk++) f(R * br + i, c0 + kk, p.values[(j * br + i) * bc + kk]);
    }
  }
}

export function toDenseRef(p: BsrParts): Float32Array {
  const out = new Float32Array(p.shape[0] * p.shape[1]);
  forEachStored(p, (r, c, v) => {
    out[r * p.shape[1] + c] = v;
  });
  return out;
}

/** y[m, out] = act(x[m, in] · Wᵀ + bias) in float64, from W's stored elements. */
export function bsrLinearRef(x: Float32Array, m: number, W: BsrParts, bias: Float32Array | null, act: Act): Float64Array {
  const [n, k] = W.shape;
  const y = new Float64Array(m * n);
  forEachStored(W, (r, c, v) => {
    for (let t = 0; t < m; t++) y[t * n + r] += x[t * k + c] * v;
  });
  for (let t = 0; t < m; t++)
    for (let o = 0; o < n; o++) y[t * n + o] = activate(y[t * n + o] + (bias ? bias[o] : 0), act);
  return y;
}

/** dx[m, in] = dy[m, out] · W in float64. */
export function bsrLinearTransposedRef(dy: Float32Array, m: number, W: BsrParts): Float64Array {
  const [n, k] = W.shape;
  const dx = new Float64Array(m * k);
  forEachStored(W, (r, c, v) => {
    for (let t = 0; t < m; t++) dx[t * k + c] += dy[t * n + r] * v;
  });
  return dx;
}

/** Values of (a[m, k] · b[n, k]ᵀ) on mask's blocks, block by block, in float64. */
export function sddmmRef(a: Float32Array, b: Float32Array, k: number, mask: BsrParts): Float64Array {
  const [br, bc] = mask.blockSize;
  const nnz = mask.colIdx.length;
  const out = new Float64Array(nnz * br * bc);
  const nbr = mask.shape[0] / br;
  for (let R = 0; R < nbr; R++) {
    for (let j = mask.rowPtr[R]; j < mask.rowPtr[R + 1]; j++) {
      for (let i = 0; i < br; i++) {
        const row = R * br + i;
        for (let cc = 0; cc < bc; cc++) {
          const col = mask.colIdx[j] * bc + cc;
          let s = 0;
          for (let kk = 0; kk < k; kk++) s += a[row * k + kk] * b[col * k + kk];
          out[(j * br + i) * bc + cc] = s;
        }
      }
    }
  }
  return out;
}

/** Blocks of a dense matrix whose mask entry is set, as parts (mask: one entry per block). */
export function fromBlockMaskRef(dense: Float32Array, shape: readonly number[], blockSize: readonly number[], keep: ArrayLike<number>): BsrParts {
  const [rows, cols] = shape;
  const [br, bc] = blockSize;
  const nbr = rows / br;
  const nbc = cols / bc;
  const rowPtr = new Int32Array(nbr + 1);
  const cols_: number[] = [];
  const vals: number[] = [];
  for (let R = 0; R < nbr; R++) {
    for (let c = 0; c < nbc; c++) {
      if (!keep[R * nbc + c]) continue;
      cols_.push(c);
      for (let i = 0; i < br; i++) for (let kk = 0; kk < bc; kk++) vals.push(dense[(R * br + i) * cols + c * bc + kk]);
    }
    rowPtr[R + 1] = cols_.length;
  }
  return { shape, blockSize, rowPtr, colIdx: Int32Array.from(cols_), values: Float32Array.from(vals) };
}

/** L2 norm of each block (block-row major), float64. */
export function blockNormsRef(dense: Float32Array, shape: readonly number[], blockSize: readonly number[]): number[] {
  const [, cols] = shape;
  const [br, bc] = blockSize;
  const nbr = shape[0] / br;
  const nbc = cols / bc;
  const norms: number[] = [];
  for (let R = 0; R < nbr; R++)
    for (let c = 0; c < nbc; c++) {
      let s = 0;
      for (let i = 0; i < br; i++)
        for (let kk = 0; kk < bc; kk++) {
          const v = dense[(R * br + i) * cols + c * bc + kk];
          s += v * v;
        }
      norms.push(Math.sqrt(s));
    }
  return norms;
}

/** Keep mask of the round(density·n) largest norms (ties: lower index first). */
export function topBlocksRef(norms: number[], density: number): Uint8Array {
  const want = Math.floor(density * norms.length + 0.5);
  const order = norms.map((v, i) => i).sort((x, y) => norms[y] - norms[x] || x - y);
  const keep = new Uint8Array(norms.length);
  for (let i = 0; i < want; i++) keep[order[i]] = 1;
  return keep;
}

/** Transpose from the dense form (shape [cols, rows], block [bc, br]). */
export function transposeRef(p: BsrParts): BsrParts {
  const [rows, cols] = p.shape;
  const [br, bc] = p.blockSize;
  const dense = toDenseRef(p);
  const t = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = dense[r * cols + c];
  // kept pattern of the transpose: block (c, R) kept iff (R, c) kept
  const nbr = rows / br;
  const nbc = cols / bc;
  const keep = new Uint8Array(nbr * nbc);
  for (let R = 0; R < nbr; R++) for (let j = p.rowPtr[R]; j < p.rowPtr[R + 1]; j++) keep[p.colIdx[j] * nbr + R] = 1;
  return fromBlockMaskRef(t, [cols, rows], [bc, br], keep);
}
