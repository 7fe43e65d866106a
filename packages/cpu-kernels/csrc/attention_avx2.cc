// Attention tile kernels compiled for avx2 (see vec_math.h for why system headers come first).
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstddef>
#include <cstdint>

#include "attention.h"  // its inline helpers must be compiled for the baseline, before the switch

#if defined(__x86_64__)  // on arm64 the body compiles to NEON (vec_math.h)
#pragma GCC target("avx2,fma")
#endif
#define QLORA_VEC 256
#include "attention_tile.h"
