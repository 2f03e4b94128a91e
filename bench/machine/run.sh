#!/usr/bin/env bash
# What this machine can do, measured: fp32 FMA peak, streaming read bandwidth
# and OpenBLAS sgemm on the dense benchmark's shapes, at 1 and 2 threads
# (or THREADS="1 2 4"). The performance targets in the issues are read against
# these. Needs gcc (and libopenblas-dev for the sgemm line; skipped without).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
gcc -O2 -mavx2 -mfma -fopenmp "$here/fma_peak.c" -o "$out/fma_peak"
gcc -O2 -mavx2 -fopenmp "$here/stream_read.c" -o "$out/stream_read"
grep -m1 'model name' /proc/cpuinfo || true
for t in ${THREADS:-1 2}; do
  OMP_NUM_THREADS=$t "$out/fma_peak"
  OMP_NUM_THREADS=$t "$out/stream_read"
done
if gcc -O2 "$here/sgemm_openblas.c" -o "$out/sgemm" -lopenblas 2>/dev/null; then
  for t in ${THREADS:-1 2}; do echo "OpenBLAS threads $t:"; OPENBLAS_NUM_THREADS=$t "$out/sgemm"; done
else
  echo "libopenblas-dev not installed: OpenBLAS sgemm skipped (apt-get install libopenblas-dev)"
fi
