// VecOps compiled for avx512 (see vec_math.h for why system headers come before the target switch).
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstddef>
#include <cstdint>

#if defined(__x86_64__)  // on arm64 the body compiles to NEON (vec_math.h)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#endif
#define QLORA_VEC 512
#include "elementwise_vec_impl.h"
