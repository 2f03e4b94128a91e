// The N:M patterns with compile-time specialised kernels. One list: nm.cc's
// nm_is_tuned() and every ISA file's dispatch expand it, so they cannot drift.
// Each has N | 8 and M ∈ {2, 4, 8}: a chunk of 8 kept values then covers
// whole groups (8/N of them, 8·M/N columns) and its indices fill exactly B
// bytes (B = log2 M bits each), which is what the kernels' decoding relies on.
#pragma once

#define SPARSEKIT_NM_TUNED_PATTERNS(X) X(1, 2) X(2, 4) X(1, 4) X(2, 8) X(1, 8) X(4, 8)
