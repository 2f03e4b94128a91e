#!/usr/bin/env bash
# The CUDA backend's device check, for a machine with an NVIDIA GPU (made for
# the lent H200: nvcc 13, CMake, PyTorch; no Node.js and no network there, so
# Node and the addon travel in build-devcarry/, made here by
# bench/gpu-check-prepare.sh). In under 8 minutes it:
#
#   1. builds the plugin (scripts/build-cuda-check.js: nvcc, ptxas report,
#      exports, and that the addon opens it and sees the GPU);
#   2. lists the tensor-core instructions of every kernel (cuobjdump, and
#      scripts/sass-scan.js --check);
#   3. runs every CUDA test (test/cuda.test.ts against the real GPU, and
#      test/cuda-plugin.test.ts);
#   4. times torch.matmul (bench/torch_ref.py) and the GPU benchmarks
#      (bench/cuda.bench.ts), and prints one table with the issue's targets.
#
# Usage (device tool): command `bash bench/gpu-check.sh`, carry ["build-devcarry"],
# timeout_s 600. Logs and JSON land in $OUT (or build-gpucheck/ elsewhere).
# Env: SKIP_BENCH=1 (tests only), SANITIZE=1 (then compute-sanitizer memcheck
# on test/cuda.test.ts; slow), PROFILE=1 (then scripts/cuda-profile.ts times and
# Nsight Compute sections per kernel; NCU_LIMIT=s caps ncu), SKIP_SASS=1 (no
# scripts/sass-scan.js: it compiles probe kernels, ~35 s), JOBS=N, GPU_CHECK_BUDGET=seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
# Logs go to $work; at the end they are packed into $out (the device tool
# returns at most 8 files from $OUT): gpucheck.tar.xz, plus summary.txt and
# bench.md to read directly.
out=${OUT:-$repo/build-gpucheck}
work=$repo/build-gpucheck/work
rm -rf "$work"
mkdir -p "$out" "$work"
t0=$(date +%s)
# Everything must end within 8 minutes on the device; GPU_CHECK_BUDGET (s)
# lengthens it for a dry run on a slow machine without a GPU.
deadline=$((t0 + ${GPU_CHECK_BUDGET:-470}))
step() { printf '\n=== [%3ds] %s\n' $(($(date +%s) - t0)) "$*"; }
left() { local l=$((deadline - $(date +%s))); ((l > 10)) && echo $l || echo 10; }
status=()
record() { status+=("$(printf '%-34s %s' "$1" "$2")"); }
summary() {
  {
    step "summary"
    printf '%s\n' "${status[@]}"
    if [[ -f "$work/bench.md" ]]; then
      echo
      cat "$work/bench.md"
    fi
    printf '\ntotal %ds; logs in %s/gpucheck.tar.xz\n' $(($(date +%s) - t0)) "$out"
  } | tee "$work/summary.txt"
  cp "$work/summary.txt" "$out/summary.txt"
  [[ -f "$work/bench.md" ]] && cp "$work/bench.md" "$out/bench.md"
  tar -C "$work" -cJf "$out/gpucheck.tar.xz" . 2>/dev/null || true
}
trap summary EXIT
failed() { printf '%s\n' "${status[@]}" | grep -q FAILED; }

step "machine"
nvidia-smi -L || true
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader || true
export PATH=/usr/local/cuda/bin:$PATH
nvcc --version | tail -1 || { echo "nvcc not found"; exit 1; }
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))' || echo "no PyTorch: the torch anchors will be missing"

step "Node.js and the addon"
carry=$repo/build-devcarry
if ! command -v node >/dev/null 2>&1; then
  [[ -f $carry/node.xz ]] || { echo "no node on this machine and no build-devcarry/node.xz (run bench/gpu-check-prepare.sh there and carry build-devcarry)"; exit 1; }
  mkdir -p /tmp/sk-node/bin
  xz -dc "$carry/node.xz" >/tmp/sk-node/bin/node
  chmod +x /tmp/sk-node/bin/node
  export PATH=/tmp/sk-node/bin:$PATH
fi
node --version
if ! node -e 'require.resolve("tsx"); require.resolve("node-gyp-build")' >/dev/null 2>&1; then
  [[ -f $carry/node_modules.tar.xz ]] || { echo "no node_modules with tsx here and no build-devcarry/node_modules.tar.xz"; exit 1; }
  mkdir -p /tmp/sk-nm
  tar -C /tmp/sk-nm -xJf "$carry/node_modules.tar.xz"
  rm -rf node_modules
  ln -s /tmp/sk-nm/node_modules node_modules
fi
if [[ ! -f build/Release/sparsekit.node ]]; then
  [[ -f $carry/sparsekit.node ]] || { echo "no addon: build/Release/sparsekit.node missing and not carried"; exit 1; }
  mkdir -p build/Release
  cp "$carry/sparsekit.node" build/Release/sparsekit.node
fi
node --import tsx -e 'const sk = require("./lib/index.ts"); const i = sk.info(); console.log("addon", i.version, "isa", i.isa, "threads", i.threads)'

step "the plugin"
plugin=$repo/build-cuda/libsparsekit_cuda.so
if [[ -n "${GPU_CHECK_PLUGIN:-}" ]]; then
  # A dry run of this script on a machine without a GPU: GPU_CHECK_PLUGIN = the host stand-in
  # (test/fixtures/cuda_host_plugin.cc built as a shared library).
  plugin=$GPU_CHECK_PLUGIN
  record "plugin" "GPU_CHECK_PLUGIN=$plugin (dry run)"
elif [[ -f $carry/libsparsekit_cuda.so.xz && "${GPU_CHECK_BUILD:-0}" != 1 ]]; then
  # Built on the development machine (bench/gpu-check-prepare.sh): no device time on nvcc.
  mkdir -p build-cuda
  xz -dc "$carry/libsparsekit_cuda.so.xz" >"$plugin"
  [[ -f $carry/ptxas.log ]] && cp "$carry/ptxas.log" build-cuda/ptxas.log
  echo "carried plugin: $(du -h "$plugin" | cut -f1)"
  if SPARSEKIT_CUDA_PLUGIN=$plugin node --import tsx -e 'const c = require("./lib/index.ts").info().backends.cuda; console.log(`backend: ${c.status}: ${c.reason}`); process.exit(c.available ? 0 : 3)' 2>&1 | tee "$work/build.log"; then
    record "plugin (carried) loads" "ok"
  else
    record "plugin (carried) loads" "FAILED (see build.log)"
    exit 1
  fi
else
  if timeout "$(left)" node scripts/build-cuda-check.js --jobs "${JOBS:-16}" 2>&1 | tee "$work/build.log"; then
    record "plugin build + load" "ok"
  else
    record "plugin build + load" "FAILED (see build.log)"
    exit 1
  fi
  if command -v nvidia-smi >/dev/null 2>&1 && ! grep -q '): available:' "$work/build.log"; then
    # A GPU machine where the backend is not available: every CUDA test would only skip.
    record "CUDA backend available" "FAILED: $(grep -o 'the addon loads it.*' "$work/build.log" || echo 'no load report')"
    exit 1
  fi
fi
[[ -f build-cuda/ptxas.log ]] && cp build-cuda/ptxas.log "$work/ptxas.log"
export SPARSEKIT_CUDA_PLUGIN=$plugin

step "diagnostics per op group (scripts/cuda-diag.ts, one process each)"
diag_bad=()
# spec group:v → g (group), w / tma / epi (the SPARSEKIT_CUDA_* values), name (for logs)
variant() {
  g=${1%%:*}
  local v=${1##*:}
  w=$([[ $v == 0 ]] && echo 0 || echo 1)
  tma=$([[ $v == c ]] && echo 0 || echo 1)
  epi=$([[ $v == e ]] && echo 1 || echo 0)
  name=$g
  case $v in 0) name+=-mma ;; c) name+=-cpasync ;; e) name+=-epilogue ;; esac
}
# name:v where v = 1 (defaults: TMA-fed wgmma on Hopper), 0 (SPARSEKIT_CUDA_WGMMA=0: mma.sync),
# c (SPARSEKIT_CUDA_TMA=0: wgmma fed by cp.async), e (SPARSEKIT_CUDA_EPILOGUE=1: the TMA kernels'
# specialised epilogue); the variants matter on Hopper only.
for spec in linear:1 grouped:1 experts:1 nm:1 bsr:1 route:1 linear:e grouped:e experts:e linear:c grouped:c experts:c linear:0 grouped:0 experts:0; do
  variant "$spec"
  set +e
  SPARSEKIT_CUDA_WGMMA=$w SPARSEKIT_CUDA_TMA=$tma SPARSEKIT_CUDA_EPILOGUE=$epi timeout 60 node --import tsx scripts/cuda-diag.ts "$g" >"$work/diag-$name.log" 2>&1
  rc=$?
  set -e
  if [[ $rc == 0 ]]; then
    record "diag $name" "ok ($(grep -c '^  ok' "$work/diag-$name.log") cases)"
  else
    record "diag $name" "FAILED rc $rc ($(grep -c '^  ok' "$work/diag-$name.log") ok, $(grep -c '^  \(WRONG\|ERROR\)' "$work/diag-$name.log") wrong)"
    diag_bad+=("$spec")
    grep -v '^  ok' "$work/diag-$name.log" | cut -c1-500 | head -30 || true
  fi
done
# A CUDA error in a group: where did the kernel go out of bounds (or race)?
if command -v compute-sanitizer >/dev/null 2>&1; then
  for spec in "${diag_bad[@]}"; do
    variant "$spec"
    grep -q 'ERROR' "$work/diag-$name.log" || continue
    (($(left) > 240)) || break
    step "compute-sanitizer memcheck: diag $name"
    set +e
    SPARSEKIT_CUDA_WGMMA=$w SPARSEKIT_CUDA_TMA=$tma SPARSEKIT_CUDA_EPILOGUE=$epi timeout 100 compute-sanitizer --tool memcheck --print-limit 20 node --import tsx scripts/cuda-diag.ts "$g" >"$work/memcheck-$name.log" 2>&1
    set -e
    grep -E '^========= (Invalid|Program hit|  at|    at| Address|Error)' "$work/memcheck-$name.log" | cut -c1-300 | head -24 || true
  done
fi

step "tensor-core instructions in the machine code"
if command -v cuobjdump >/dev/null 2>&1; then
  cuobjdump --dump-sass "$plugin" >"$work/sass.txt" 2>&1 || true
  printf 'cuobjdump: %s HMMA (%s sparse .SP), %s HGMMA instructions in all kernels\n' \
    "$(grep -c 'HMMA' "$work/sass.txt" || true)" "$(grep -c 'HMMA\.SP\|HMMA.*\.SP' "$work/sass.txt" || true)" "$(grep -c 'HGMMA' "$work/sass.txt" || true)"
  xz -T0 -f "$work/sass.txt" || true
fi
if [[ "${SKIP_SASS:-0}" == 1 ]]; then
  record "SASS scan (HMMA/HMMA.SP/HGMMA)" "skipped (SKIP_SASS=1; cuobjdump counts above)"
elif timeout "$(left)" node scripts/sass-scan.js "$plugin" --ptxas build-cuda/ptxas.log --check >"$work/sass-scan.txt" 2>&1; then
  record "SASS scan (HMMA/HMMA.SP/HGMMA)" "ok"
else
  record "SASS scan (HMMA/HMMA.SP/HGMMA)" "FAILED (see sass-scan.txt)"
fi
[[ -f "$work/sass-scan.txt" ]] && tail -3 "$work/sass-scan.txt"

step "CUDA tests on the GPU"
set +e
tl=$(left)
((tl > 200)) && tl=200
SPARSEKIT_SKIP_STANDIN=1 timeout "$tl" node --import tsx --test --test-concurrency=1 --test-reporter=spec \
  test/cuda.test.ts test/cuda-plugin.test.ts >"$work/tests.log" 2>&1
rc=$?
set -e
grep -E '^ *(✔|✖|﹣)|# (pass|fail|skipped|tests)|^ℹ' "$work/tests.log" | tail -60 || true
pass=$(grep -E '^ℹ pass' "$work/tests.log" | awk '{print $3}' || true)
fail=$(grep -E '^ℹ fail' "$work/tests.log" | awk '{print $3}' || true)
skip=$(grep -E '^ℹ skipped' "$work/tests.log" | awk '{print $3}' || true)
record "CUDA tests" "$([[ $rc == 0 ]] && echo ok || echo FAILED) (pass ${pass:-?}, fail ${fail:-?}, skipped ${skip:-?}; rc $rc)"
if [[ $rc != 0 ]]; then
  grep -A12 '^✖\|^  ✖' "$work/tests.log" | cut -c1-400 | head -80 || true
  # One failing test can leave the CUDA context broken for every later one:
  # run each failing test alone to see which fail by themselves.
  step "failing CUDA tests, each alone"
  grep -oE '^✖ cuda: .* \([0-9.]+m?s\)$' "$work/tests.log" | sed -E 's/^✖ //; s/ \([0-9.]+m?s\)$//' | sort -u >"$work/failing.txt" || true
  while IFS= read -r name; do
    (($(left) > 150)) || { echo "no time left for more single reruns"; break; }
    pat=$(printf '%s' "$name" | sed -e 's/[][\.*^$()+?{}|/]/\\&/g')
    set +e
    timeout 90 node --import tsx --test --test-reporter=spec --test-name-pattern="^${pat}\$" test/cuda.test.ts >"$work/single.log" 2>&1
    r1=$?
    set -e
    cat "$work/single.log" >>"$work/tests-single.log"
    echo "$([[ $r1 == 0 ]] && echo 'passes alone' || echo 'FAILS alone ')  $name"
    [[ $r1 == 0 ]] || grep -m3 -E 'rel err|Error|error' "$work/single.log" | cut -c1-300
  done <"$work/failing.txt"
fi

if [[ "${SKIP_BENCH:-0}" != 1 ]]; then
  step "torch.matmul anchors"
  if timeout "$(left)" python3 bench/torch_ref.py "$work/torch.json" --quick 2>&1 | tee "$work/torch.log"; then
    record "torch anchors" "ok"
  else
    record "torch anchors" "FAILED (see torch.log)"
  fi
  step "GPU benchmarks"
  set +e
  BENCH_QUICK=1 BENCH_TORCH_JSON=$work/torch.json timeout "$(left)" node --import tsx bench/run.ts cuda --no-save >"$work/bench.md" 2>"$work/bench.err"
  rc=$?
  set -e
  tail -5 "$work/bench.err"
  record "GPU benchmarks" "$([[ $rc == 0 ]] && echo ok || echo "FAILED rc $rc (see bench.err)")"
  grep -E '^- (PASS|FAIL) ' "$work/bench.md" | sed 's/^- /target: /' || true
fi
if [[ "${PROFILE:-0}" == 1 ]]; then
  # Tuning data: per-case times (variants included) and Nsight Compute sections per kernel.
  step "per-case GPU times (scripts/cuda-profile.ts)"
  set +e
  timeout 60 node --import tsx scripts/cuda-profile.ts time 2>&1 | tee "$work/profile-times.txt"
  set -e
  if command -v ncu >/dev/null 2>&1 && (($(left) > 100)); then
    step "Nsight Compute (ncu --clock-control none)"
    tl=$(left)
    ((tl > ${NCU_LIMIT:-120})) && tl=${NCU_LIMIT:-120}
    set +e
    timeout "$tl" ncu --clock-control none --kernel-name-base function \
      --kernel-name 'regex:tma_|wg_|route_|permute|combine|bsr_linear_mma|nm24|tile_schedule' \
      --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy \
      node --import tsx scripts/cuda-profile.ts once >"$work/ncu.txt" 2>&1
    echo "ncu rc $?"
    set -e
    grep -E '^  [a-z_]+.*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|L2 Cache Throughput|Warp Cycles Per Issued|Registers Per|Achieved Occupancy' "$work/ncu.txt" | cut -c1-150 | head -150 || true
  fi
fi
if [[ "${SANITIZE:-0}" == 1 ]] && command -v compute-sanitizer >/dev/null 2>&1; then
  # Out-of-bounds and misaligned accesses that do not crash (memcheck), on every CUDA test.
  step "compute-sanitizer memcheck on test/cuda.test.ts"
  tl=$(left)
  ((tl > 240)) && tl=240
  set +e
  timeout "$tl" compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 50 node --import tsx --test \
    --test-reporter=spec test/cuda.test.ts >"$work/memcheck.log" 2>&1
  rc=$?
  set -e
  errs=$(grep -cE '^========= (Invalid|Program hit|.*(misaligned|out of bounds))' "$work/memcheck.log" || true)
  record "compute-sanitizer memcheck" "$([[ $rc == 0 ]] && echo ok || { [[ $rc == 124 ]] && echo "timed out after ${tl}s" || echo "FAILED rc $rc"; }) ($errs error reports; $(grep -E '^ℹ (pass|fail) ' "$work/memcheck.log" | tr '\n' ' '))"
  grep -E '^=========' "$work/memcheck.log" | cut -c1-300 | head -30 || true
fi
if failed; then exit 1; fi
