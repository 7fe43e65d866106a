// Attention tile kernels compiled for avx2 (see vec_math.h for why system headers come first).
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "attention.h"  // its inline helpers must be compiled for the baseline, before the switch

#pragma GCC target("avx2,fma")
#define QLORA_VEC 256
#include "attention_tile.h"
