// Attention tile kernels compiled for sse (see vec_math.h for why system headers come first).
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstddef>
#include <cstdint>

#include "attention.h"  // its inline helpers must be compiled for the baseline, before the switch

// baseline (x86-64-v2): no target switch
#define QLORA_VEC 128
#include "attention_tile.h"
