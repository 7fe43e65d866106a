// Attention tile kernels compiled for avx512 (see vec_math.h for why system headers come first).
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "attention.h"  // its inline helpers must be compiled for the baseline, before the switch

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#define QLORA_VEC 512
#include "attention_tile.h"
