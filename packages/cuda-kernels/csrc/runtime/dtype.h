// Element types as the JS layer numbers them (src/native.ts DTYPE_CODE must match).
#pragma once
#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#define QK_HD __host__ __device__
#else
#define QK_HD
#endif

namespace qk {

enum DType : int { F32 = 0, F16 = 1, BF16 = 2, I32 = 3, U8 = 4, BOOL = 5 };

QK_HD inline size_t dtypeSize(int dtype) {
  switch (dtype) {
    case F32: case I32: return 4;
    case F16: case BF16: return 2;
    case U8: case BOOL: return 1;
    default: return 0;
  }
}

}  // namespace qk
