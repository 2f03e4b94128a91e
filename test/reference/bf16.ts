/**
 * bfloat16 rounding for test references: the value a float32 takes when stored
 * as bf16 (round to nearest, ties to even), computed with integer arithmetic
 * on the float32 bits, independently of the bindings' converter.
 */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function bf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  const lsb = (u >>> 16) & 1;
  return ((u + 0x7fff + lsb) >>> 16) & 0xffff;
}

export function bf16ToFloat(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0];
}

/** Each element rounded to bf16 and back. */
export function roundBf16(a: Float32Array): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = bf16ToFloat(bf16Bits(a[i]));
  return out;
}
