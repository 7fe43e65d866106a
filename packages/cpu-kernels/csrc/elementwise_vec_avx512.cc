// VecOps compiled for avx512 (see vec_math.h for why system headers come before the target switch).
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#define QLORA_VEC 512
#include "elementwise_vec_impl.h"
