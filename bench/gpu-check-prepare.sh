#!/usr/bin/env bash
# Run HERE (the development machine) before a device call of bench/gpu-check.sh:
# the GPU machine has CUDA, CMake and PyTorch but no Node.js and no network,
# so this packs what the check needs into build-devcarry/ (ignored by git;
# name it in the device tool's `carry`):
#   node.xz              this machine's node binary (x86-64, xz)
#   node_modules.tar.xz  tsx, esbuild (+ its linux-x64 binary), node-gyp-build
#   sparsekit.node       the addon built here (npm run build:native)
#   libsparsekit_cuda.so.xz   the plugin built here (scripts/build-cuda-check.js,
#                        nvcc 13.0, every target), so that no device time goes
#                        on compiling; the check builds it there when this is
#                        absent (or with GPU_CHECK_BUILD=1)
# Total ≈ 35 MB; the device tool carries at most 64 MiB with the working tree.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dst=build-devcarry
mkdir -p "$dst"

[[ "$(uname -m)" == x86_64 ]] || { echo "the GPU machine is x86-64: prepare on an x86-64 machine"; exit 1; }
if [[ ! -f build/Release/sparsekit.node ]]; then npm run build:native; fi
cp build/Release/sparsekit.node "$dst/sparsekit.node"
node scripts/build-cuda-check.js
xz -T0 -6 -c build-cuda/libsparsekit_cuda.so >"$dst/libsparsekit_cuda.so.xz"
cp build-cuda/ptxas.log "$dst/ptxas.log"

node_bin=$(node -p 'process.execPath')
if [[ ! -f $dst/node.xz || $node_bin -nt $dst/node.xz ]]; then
  echo "compressing $node_bin ($(node --version))"
  xz -T0 -1 -c "$node_bin" >"$dst/node.xz"
fi

nm=$(node -p 'require("path").dirname(require("path").dirname(require.resolve("tsx/package.json")))')
pkgs=(tsx esbuild node-gyp-build "@esbuild/linux-x64")
for p in "${pkgs[@]}"; do [[ -d $nm/$p ]] || { echo "missing $nm/$p (npm install)"; exit 1; }; done
tar -C "$(dirname "$nm")" -cJf "$dst/node_modules.tar.xz" --dereference "${pkgs[@]/#/node_modules/}"

du -ch "$dst"/* | tail -n +1
echo "carry: [\"$dst\"]   command: bash bench/gpu-check.sh   timeout_s: 600"
