// Runtime CPU dispatch for the hot loops of the CPU kernels: with GCC on x86-64, a function marked
// PSC_MULTIVERSION is compiled twice (baseline x86-64 and x86-64-v3: AVX2 + FMA, whose gathers the inner
// loops over tap offsets use) and the loader picks the best for the machine (an ifunc). Elsewhere the
// macro is empty. Mark free functions over __restrict pointers whose loops the compiler can vectorise.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PSC_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PSC_MULTIVERSION
#endif
