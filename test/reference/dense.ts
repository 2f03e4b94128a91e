/**
 * Naive float64 references for the dense ops. Written from the definitions,
 * sharing no code with the kernels.
 */
export type Act = 'none' | 'relu' | 'gelu' | 'gelu_tanh' | 'silu';

/** Error function via its Maclaurin series / continued fraction in float64 (accurate to ~1e-15). */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 3) {
    // Series: erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
    let sum = 0;
    let term = ax;
    for (let n = 0; n < 200; n++) {
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
      term *= (-ax * ax) / (n + 1);
    }
    const r = (2 / Math.sqrt(Math.PI)) * sum;
    return x < 0 ? -r : r;
  }
  // Continued fraction for erfc at large |x| (Lentz).
  const erfc = erfcLarge(ax);
  return x < 0 ? erfc - 1 : 1 - erfc;
}

function erfcLarge(x: number): number {
  // erfc(x) = exp(-x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
  let f = x;
  const tiny = 1e-300;
  let C = f;
  let D = 0;
  for (let n = 1; n < 500; n++) {
    const a = n / 2;
    D = x + a * D;
    D = Math.abs(D) < tiny ? tiny : D;
    C = x + a / C;
    C = Math.abs(C) < tiny ? tiny : C;
    D = 1 / D;
    const delta = C * D;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return Math.exp(-x * x) / Math.sqrt(Math.PI) / f;
}

export function activate(v: number, act: Act): number {
  switch (act) {
    case 'none':
      return v;
    case 'relu':
      return v > 0 ? v : 0;
    case 'gelu':
      return 0.5 * v * (1 + erf(v / Math.SQRT2));
    case 'gelu_tanh':
      return 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v)));
    case 'silu':
      return v / (1 + Math.exp(-v));
  }
}

/** y[m, n] = act(x[m, k] · w[n, k]ᵀ + b[n]) in float64. */
export function linearRef(
  x: Float32Array,
  m: number,
  k: number,
  w: Float32Array,
  n: number,
  bias: Float32Array | null,
  act: Act,
): Float64Array {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = bias ? bias[j] : 0;
      for (let kk = 0; kk < k; kk++) acc += x[i * k + kk] * w[j * k + kk];
      y[i * n + j] = activate(acc, act);
    }
  }
  return y;
}
