#!/usr/bin/env node
// Which machine instructions the CUDA plugin's kernels really contain, without
// cuobjdump: counts the tensor-core instructions (HMMA, sparse HMMA, HGMMA) in
// every kernel of every cubin embedded in libsparsekit_cuda.so, and joins
// ptxas's register / spill report (build-cuda/ptxas.log).
//
// SASS encodings are not documented, so the opcodes are not taken on faith:
// with nvcc at hand, small probe kernels are compiled first (a kernel without
// any mma, one with one mma.sync, one with one mma.sp, one with three wgmma),
// and the instruction classes are learned by difference: the 12-bit opcode
// field that appears exactly once in the mma probes and never in the plain
// one is HMMA; the bits a sparse HMMA sets on top of a dense one mark HMMA.SP;
// the opcode that appears three times with three wgmma and five times with five
// is HGMMA. The encodings
// learned (and checked against the values seen with CUDA 13.0: HMMA 0x23c,
// HGMMA 0x9f0) are printed. Where cuobjdump exists (the GPU machine),
// bench/gpu-check.sh also greps its --dump-sass output.
//
// Usage: node scripts/sass-scan.js [lib.so] [--ptxas ptxas.log] [--markdown] [--check]
//   --check: exit 1 if a tensor-core kernel has no tensor-core instruction,
//            a 2:4 kernel has no sparse HMMA, or a CUDA-core kernel has any.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.join(__dirname, '..');
const args = process.argv.slice(2);
const flag = (f) => args.includes(f);
const opt = (f, d) => (args.indexOf(f) >= 0 ? args[args.indexOf(f) + 1] : d);
const lib = args.find((a) => !a.startsWith('--') && args[args.indexOf(a) - 1] !== '--ptxas') || path.join(root, 'build-cuda', 'libsparsekit_cuda.so');
const ptxasLog = opt('--ptxas', path.join(path.dirname(lib), 'ptxas.log'));

// ---- ELF ------------------------------------------------------------------------------

function elfSections(buf, base) {
  const shoff = Number(buf.readBigUInt64LE(base + 0x28));
  const shentsize = buf.readUInt16LE(base + 0x3a);
  const shnum = buf.readUInt16LE(base + 0x3c);
  const shstrndx = buf.readUInt16LE(base + 0x3e);
  const sh = [];
  for (let i = 0; i < shnum; i++) {
    const o = base + shoff + i * shentsize;
    sh.push({ nameOff: buf.readUInt32LE(o), off: base + Number(buf.readBigUInt64LE(o + 0x18)), size: Number(buf.readBigUInt64LE(o + 0x20)) });
  }
  const str = sh[shstrndx];
  for (const s of sh) {
    let e = str.off + s.nameOff;
    let n = '';
    while (buf[e]) n += String.fromCharCode(buf[e++]);
    s.name = n;
  }
  return sh;
}

/** Every CUDA cubin (ELF, e_machine 190) inside `buf`: { sm, kernels: [{ name, insts: [lo, hi][] }] }. */
function cubins(buf) {
  const out = [];
  for (let i = buf.indexOf('\x7fELF', 0, 'latin1'); i >= 0; i = buf.indexOf('\x7fELF', i + 4, 'latin1')) {
    if (buf.readUInt16LE(i + 18) !== 190) continue;
    const flags = buf.readUInt32LE(i + 0x30);
    const sm = (flags >> 8) & 0xff;
    const kernels = [];
    for (const s of elfSections(buf, i)) {
      if (!s.name.startsWith('.text.')) continue;
      const insts = [];
      for (let o = s.off; o + 16 <= s.off + s.size; o += 16) insts.push([buf.readBigUInt64LE(o), buf.readBigUInt64LE(o + 8)]);
      kernels.push({ name: s.name.slice(6), insts });
    }
    out.push({ sm, flags, kernels });
  }
  return out;
}
const opcode = (lo) => Number(lo & 0xfffn);

// ---- calibration -----------------------------------------------------------------------

const PROBE = `
#include <stdint.h>
__global__ void probe(const uint32_t* a, float* d) {
  float c[4] = {0, 0, 0, 0};
  uint32_t x = a[threadIdx.x], y = a[threadIdx.x + 32], z = a[threadIdx.x + 64], w = a[threadIdx.x + 96];
#if MODE == 1
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
    : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(x), "r"(y), "r"(z), "r"(w), "r"(x), "r"(y));
#elif MODE == 4
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
    : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(x), "r"(y), "r"(z), "r"(w), "r"(x), "r"(y));
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
    : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(w), "r"(z), "r"(y), "r"(x), "r"(z), "r"(w));
#elif MODE == 2
  asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0;"
    : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(x), "r"(y), "r"(z), "r"(w), "r"(x), "r"(y), "r"(z), "r"(w), "r"(x));
#elif MODE == 3
  float e[64];
  for (int i = 0; i < 64; ++i) e[i] = c[i & 3] + (float)x;
  uint64_t da = ((uint64_t)y << 32) | x, db = ((uint64_t)w << 32) | z;
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
  for (int r = 0; r < NW; ++r)
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
      "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63},"
      " %64, %65, 1, 1, 1, 0, 0;"
      : "+f"(e[0]),"+f"(e[1]),"+f"(e[2]),"+f"(e[3]),"+f"(e[4]),"+f"(e[5]),"+f"(e[6]),"+f"(e[7]),"+f"(e[8]),"+f"(e[9]),"+f"(e[10]),"+f"(e[11]),"+f"(e[12]),"+f"(e[13]),"+f"(e[14]),"+f"(e[15]),
        "+f"(e[16]),"+f"(e[17]),"+f"(e[18]),"+f"(e[19]),"+f"(e[20]),"+f"(e[21]),"+f"(e[22]),"+f"(e[23]),"+f"(e[24]),"+f"(e[25]),"+f"(e[26]),"+f"(e[27]),"+f"(e[28]),"+f"(e[29]),"+f"(e[30]),"+f"(e[31]),
        "+f"(e[32]),"+f"(e[33]),"+f"(e[34]),"+f"(e[35]),"+f"(e[36]),"+f"(e[37]),"+f"(e[38]),"+f"(e[39]),"+f"(e[40]),"+f"(e[41]),"+f"(e[42]),"+f"(e[43]),"+f"(e[44]),"+f"(e[45]),"+f"(e[46]),"+f"(e[47]),
        "+f"(e[48]),"+f"(e[49]),"+f"(e[50]),"+f"(e[51]),"+f"(e[52]),"+f"(e[53]),"+f"(e[54]),"+f"(e[55]),"+f"(e[56]),"+f"(e[57]),"+f"(e[58]),"+f"(e[59]),"+f"(e[60]),"+f"(e[61]),"+f"(e[62]),"+f"(e[63])
      : "l"(da), "l"(db));
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
  for (int i = 0; i < 64; ++i) c[i & 3] += e[i];
#endif
  d[threadIdx.x] = c[0] + c[1] + c[2] + c[3];
}`;

const KNOWN = { hmma: 0x23c, hgmma: 0x9f0 };

function findNvcc() {
  for (const c of [process.env.CUDACXX, 'nvcc', '/usr/local/cuda/bin/nvcc'].filter(Boolean)) {
    const r = spawnSync(c, ['--version'], { stdio: 'ignore' });
    if (!r.error && r.status === 0) return c;
  }
  return null;
}

function probeKernel(nvcc, dir, mode, target, nw = 3) {
  const src = path.join(dir, 'probe.cu');
  fs.writeFileSync(src, PROBE);
  const out = path.join(dir, `probe_${mode}_${nw}_${target}.cubin`);
  const r = spawnSync(nvcc, ['-cubin', `-gencode=arch=compute_${target},code=sm_${target}`, `-DMODE=${mode}`, `-DNW=${nw}`, '-w', '-o', out, src], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`probe compile failed (mode ${mode}, ${target}): ${r.stderr}`);
  return cubins(fs.readFileSync(out))[0].kernels[0].insts;
}

function histogram(insts) {
  const h = new Map();
  for (const [lo] of insts) h.set(opcode(lo), (h.get(opcode(lo)) || 0) + 1);
  return h;
}

/** Learns { hmma, spMask, hgmma } from probe kernels; null where nvcc is missing. */
function calibrate() {
  const nvcc = findNvcc();
  if (!nvcc) return null;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sass-scan-'));
  try {
    const base = histogram(probeKernel(nvcc, dir, 0, '80'));
    const dense = probeKernel(nvcc, dir, 1, '80');
    const dense2 = histogram(probeKernel(nvcc, dir, 4, '80'));
    const sparse = probeKernel(nvcc, dir, 2, '80');
    // once with one mma, twice with two, never without, once in the sparse probe
    const h1 = histogram(dense), hs = histogram(sparse);
    const cands = [...h1].filter(([op, n]) => n === 1 && dense2.get(op) === 2 && !base.has(op) && hs.get(op) === 1).map(([op]) => op);
    if (cands.length !== 1) throw new Error(`could not single out HMMA: candidates ${cands.map((x) => x.toString(16))}`);
    const hmma = cands[0];
    const dh = dense.find(([lo]) => opcode(lo) === hmma)[1];
    const sh = sparse.find(([lo]) => opcode(lo) === hmma)[1];
    const spMask = sh & ~dh;
    if (spMask === 0n) throw new Error('the sparse HMMA sets no bit the dense one does not');
    const wbase = histogram(probeKernel(nvcc, dir, 0, '90a'));
    const wg3 = histogram(probeKernel(nvcc, dir, 3, '90a', 3));
    const wg5 = histogram(probeKernel(nvcc, dir, 3, '90a', 5));
    const thrice = [...wg3].filter(([op, n]) => n === 3 && wg5.get(op) === 5 && !wbase.has(op)).map(([op]) => op);
    if (thrice.length !== 1) throw new Error(`could not single out HGMMA: candidates ${thrice.map((x) => x.toString(16))}`);
    return { hmma, spMask, hgmma: thrice[0], nvcc };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// ---- ptxas report ----------------------------------------------------------------------

function ptxasReport(file) {
  const m = new Map();
  if (!fs.existsSync(file)) return m;
  let key = null;
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const e = /Compiling entry function '([^']+)' for '(sm_\w+)'/.exec(line);
    if (e) {
      key = `${e[2]} ${e[1]}`;
      m.set(key, {});
      continue;
    }
    if (!key) continue;
    const s = /(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/.exec(line);
    if (s) Object.assign(m.get(key), { stack: +s[1], spillStores: +s[2], spillLoads: +s[3] });
    const r = /Used (\d+) registers/.exec(line);
    if (r) m.get(key).registers = +r[1];
  }
  return m;
}

function demangle(names) {
  const r = spawnSync('c++filt', [], { input: names.join('\n'), encoding: 'utf8' });
  if (r.error || r.status !== 0) return names;
  return r.stdout.trim().split('\n');
}

/** Short readable kernel name: function, template arguments compacted, namespaces dropped. */
function shortName(d) {
  return d
    .replace(/skc::\(anonymous namespace\)::/g, '')
    .replace(/skc::/g, '')
    .replace(/^void\s*/, '')
    .replace(/__nv_bfloat16/g, 'bf16')
    .replace(/\((.*)\)$/, '')
    .replace(/(Mma|Simt|Sp|Wg)Cfg<([^>]*)>/g, (_, k, a) => `${k}<${a.replace(/\s/g, '').replace(/,(false|true)$/, (x, g) => (g === 'true' ? ',gated' : ''))}>`)
    .replace(/\s+/g, '');
}

// ---- main ---------------------------------------------------------------------------------

if (!fs.existsSync(lib)) {
  console.error(`sass-scan: ${lib} not found (build it: node scripts/build-cuda-check.js)`);
  process.exit(1);
}
let cal;
try {
  cal = calibrate();
} catch (e) {
  console.error(`sass-scan: calibration failed: ${e.message}`);
  process.exit(1);
}
const enc = cal ?? { hmma: KNOWN.hmma, spMask: 0x4200n, hgmma: KNOWN.hgmma };
const note = cal
  ? `opcodes learned from probe kernels with ${cal.nvcc}: HMMA 0x${enc.hmma.toString(16)} (sparse: extra bits 0x${enc.spMask.toString(16)} of the high word), HGMMA 0x${enc.hgmma.toString(16)}` +
    (enc.hmma === KNOWN.hmma && enc.hgmma === KNOWN.hgmma ? ' (as seen with CUDA 13.0)' : ' (differ from CUDA 13.0: encodings changed)')
  : 'no nvcc: using the opcodes seen with CUDA 13.0 (HMMA 0x23c, sparse bits 0x4200, HGMMA 0x9f0), not re-learned';

const buf = fs.readFileSync(lib);
const rows = [];
const ptx = ptxasReport(ptxasLog);
for (const cb of cubins(buf)) {
  const names = demangle(cb.kernels.map((k) => k.name));
  cb.kernels.forEach((k, i) => {
    let hmma = 0, sp = 0, hgmma = 0;
    for (const [lo, hi] of k.insts) {
      const op = opcode(lo);
      if (op === enc.hmma) {
        if ((hi & enc.spMask) === enc.spMask) sp++;
        else hmma++;
      } else if (op === enc.hgmma) hgmma++;
    }
    const archKey = cb.sm === 90 && hgmma > 0 ? 'sm_90a' : `sm_${cb.sm}`;
    const p = ptx.get(`${archKey} ${k.name}`) || ptx.get(`sm_${cb.sm} ${k.name}`) || ptx.get(`sm_90a ${k.name}`) || {};
    rows.push({ arch: archKey, kernel: shortName(names[i]), mangled: k.name, insts: k.insts.length, hmma, sp, hgmma, ...p });
  });
}
rows.sort((a, b) => a.kernel.localeCompare(b.kernel) || a.arch.localeCompare(b.arch));

// Expectations by kernel family.
const problems = [];
for (const r of rows) {
  const tc = /mma_kernel|wg_|tma_|nm24_kernel/.test(r.kernel);
  if (/nm24_kernel/.test(r.kernel) && r.sp === 0) problems.push(`${r.arch} ${r.kernel}: no sparse HMMA`);
  else if (/wg_|tma_/.test(r.kernel) && r.hgmma === 0) problems.push(`${r.arch} ${r.kernel}: no HGMMA`);
  else if (tc && !/wg_|tma_/.test(r.kernel) && r.hmma + r.sp === 0) problems.push(`${r.arch} ${r.kernel}: no HMMA`);
  if (!tc && r.hmma + r.sp + r.hgmma > 0) problems.push(`${r.arch} ${r.kernel}: tensor-core instructions in a CUDA-core kernel`);
  if ((r.spillStores || 0) + (r.spillLoads || 0) > 0) r.note = 'spills';
}
// Kernels that must be there: a check that finds none of a family passes nothing (a
// compressed fatbin, for one, hides its cubins from this scan).
for (const [family, re] of [['sm_90a TMA GEMMs', /tma_linear_kernel/], ['sm_90a cp.async wgmma GEMMs', /wg_linear_kernel/], ['mma.sync linear', /linear_mma_kernel/], ['2:4 sparse', /nm24_kernel/], ['route', /route_select/]]) {
  if (!rows.some((r) => re.test(r.kernel))) problems.push(`no ${family} kernel (${re.source}) found in the library's cubins`);
}

const md = flag('--markdown');
console.log(md ? `<!-- ${note} -->` : `sass-scan: ${note}`);
if (md) {
  console.log('| arch | kernel | SASS instrs | HMMA | HMMA.SP | HGMMA | registers | spill st/ld (B) |');
  console.log('|---|---|---:|---:|---:|---:|---:|---:|');
  for (const r of rows)
    console.log(`| ${r.arch} | \`${r.kernel}\` | ${r.insts} | ${r.hmma} | ${r.sp} | ${r.hgmma} | ${r.registers ?? '?'} | ${r.spillStores ?? '?'}/${r.spillLoads ?? '?'} |`);
} else {
  const w = Math.min(110, Math.max(...rows.map((r) => r.kernel.length)));
  console.log(`${'arch'.padEnd(7)} ${'kernel'.padEnd(w)} ${'instrs'.padStart(7)} ${'HMMA'.padStart(6)} ${'HMMA.SP'.padStart(7)} ${'HGMMA'.padStart(6)} ${'regs'.padStart(5)} spills`);
  for (const r of rows)
    console.log(`${r.arch.padEnd(7)} ${r.kernel.slice(0, w).padEnd(w)} ${String(r.insts).padStart(7)} ${String(r.hmma).padStart(6)} ${String(r.sp).padStart(7)} ${String(r.hgmma).padStart(6)} ${String(r.registers ?? '?').padStart(5)} ${r.spillStores ?? '?'}/${r.spillLoads ?? '?'}`);
}
if (problems.length) {
  console.log(`sass-scan: ${problems.length} problem(s):\n  ${problems.join('\n  ')}`);
  if (flag('--check')) process.exit(1);
} else {
  console.log(`sass-scan: ${rows.length} kernels; every tensor-core kernel has its tensor-core instructions, no CUDA-core kernel has any`);
}
