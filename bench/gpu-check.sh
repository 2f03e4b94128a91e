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
# Env: SKIP_BENCH=1 (tests only), SANITIZE=1 (also compute-sanitizer memcheck
# on the linear and experts tests; slow), JOBS=N, GPU_CHECK_BUDGET=seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
out=${OUT:-$repo/build-gpucheck}
mkdir -p "$out"
t0=$(date +%s)
# Everything must end within 8 minutes on the device; GPU_CHECK_BUDGET (s)
# lengthens it for a dry run on a slow machine without a GPU.
deadline=$((t0 + ${GPU_CHECK_BUDGET:-470}))
step() { printf '\n=== [%3ds] %s\n' $(($(date +%s) - t0)) "$*"; }
left() { local l=$((deadline - $(date +%s))); ((l > 10)) && echo $l || echo 10; }
status=()
record() { status+=("$(printf '%-34s %s' "$1" "$2")"); }
summary() {
  step "summary"
  printf '%s\n' "${status[@]}"
  if [[ -f "$out/bench.md" ]]; then
    echo
    cat "$out/bench.md"
  fi
  printf '\ntotal %ds; logs in %s\n' $(($(date +%s) - t0)) "$out"
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

step "build the plugin (nvcc) and check it"
plugin=$repo/build-cuda/libsparsekit_cuda.so
if timeout "$(left)" node scripts/build-cuda-check.js --jobs "${JOBS:-16}" 2>&1 | tee "$out/build.log"; then
  record "plugin build + load" "ok"
else
  record "plugin build + load" "FAILED (see build.log)"
  exit 1
fi
[[ -f build-cuda/ptxas.log ]] && cp build-cuda/ptxas.log "$out/ptxas.log"
export SPARSEKIT_CUDA_PLUGIN=$plugin
if command -v nvidia-smi >/dev/null 2>&1 && ! grep -q '): available:' "$out/build.log"; then
  # A GPU machine where the backend is not available: every CUDA test would only skip.
  record "CUDA backend available" "FAILED: $(grep -o 'the addon loads it.*' "$out/build.log" || echo 'no load report')"
  exit 1
fi

step "tensor-core instructions in the machine code"
if command -v cuobjdump >/dev/null 2>&1; then
  cuobjdump --dump-sass "$plugin" >"$out/sass.txt" 2>&1 || true
  printf 'cuobjdump: %s HMMA (%s sparse .SP), %s HGMMA instructions in all kernels\n' \
    "$(grep -c 'HMMA' "$out/sass.txt" || true)" "$(grep -c 'HMMA\.SP\|HMMA.*\.SP' "$out/sass.txt" || true)" "$(grep -c 'HGMMA' "$out/sass.txt" || true)"
  xz -T0 -f "$out/sass.txt" || true
fi
if timeout "$(left)" node scripts/sass-scan.js "$plugin" --ptxas build-cuda/ptxas.log --check >"$out/sass-scan.txt" 2>&1; then
  record "SASS scan (HMMA/HMMA.SP/HGMMA)" "ok"
else
  record "SASS scan (HMMA/HMMA.SP/HGMMA)" "FAILED (see sass-scan.txt)"
fi
tail -3 "$out/sass-scan.txt"

step "CUDA tests on the GPU"
set +e
SPARSEKIT_SKIP_STANDIN=1 timeout "$(left)" node --import tsx --test --test-concurrency=1 --test-reporter=spec \
  test/cuda.test.ts test/cuda-plugin.test.ts >"$out/tests.log" 2>&1
rc=$?
set -e
grep -E '^ *(✔|✖|﹣)|# (pass|fail|skipped|tests)|^ℹ' "$out/tests.log" | tail -60 || true
pass=$(grep -E '^ℹ pass' "$out/tests.log" | awk '{print $3}' || true)
fail=$(grep -E '^ℹ fail' "$out/tests.log" | awk '{print $3}' || true)
skip=$(grep -E '^ℹ skipped' "$out/tests.log" | awk '{print $3}' || true)
record "CUDA tests" "$([[ $rc == 0 ]] && echo ok || echo FAILED) (pass ${pass:-?}, fail ${fail:-?}, skipped ${skip:-?}; rc $rc)"
if [[ $rc != 0 ]]; then
  grep -B2 -A25 '✖' "$out/tests.log" | head -120 || true
fi

if [[ "${SANITIZE:-0}" == 1 ]] && command -v compute-sanitizer >/dev/null 2>&1; then
  step "compute-sanitizer memcheck (linear, experts, route)"
  set +e
  timeout "$(left)" compute-sanitizer --tool memcheck --error-exitcode 9 node --import tsx --test \
    --test-name-pattern='linear f32|groupedGatedLinear bf16|route matches|nmLinear 2:4' test/cuda.test.ts >"$out/memcheck.log" 2>&1
  rc=$?
  set -e
  record "compute-sanitizer memcheck" "$([[ $rc == 0 ]] && echo ok || echo "FAILED rc $rc")"
  tail -20 "$out/memcheck.log"
fi

if [[ "${SKIP_BENCH:-0}" != 1 ]]; then
  step "torch.matmul anchors"
  if timeout "$(left)" python3 bench/torch_ref.py "$out/torch.json" --quick 2>&1 | tee "$out/torch.log"; then
    record "torch anchors" "ok"
  else
    record "torch anchors" "FAILED (see torch.log)"
  fi
  step "GPU benchmarks"
  set +e
  BENCH_QUICK=1 BENCH_TORCH_JSON=$out/torch.json timeout "$(left)" node --import tsx bench/run.ts cuda --no-save >"$out/bench.md" 2>"$out/bench.err"
  rc=$?
  set -e
  tail -5 "$out/bench.err"
  record "GPU benchmarks" "$([[ $rc == 0 ]] && echo ok || echo "FAILED rc $rc (see bench.err)")"
  grep -E '^- (PASS|FAIL) ' "$out/bench.md" | sed 's/^- /target: /' || true
fi
if failed; then exit 1; fi
