// VecOps compiled for sse (see vec_math.h for why system headers come before the target switch).
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstddef>
#include <cstdint>

// baseline (x86-64-v2): no target switch
#define QLORA_VEC 128
#include "elementwise_vec_impl.h"
