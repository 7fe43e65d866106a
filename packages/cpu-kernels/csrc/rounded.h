// rounded(v): v unchanged, but the compiler can no longer fuse the multiply that produced it with a following
// add. GCC contracts a*b + c into an FMA under -ffp-contract=fast, its default for C++ even with -std=c++17,
// wherever FMA is available: in every target("avx2,fma") or AVX-512 kernel, and everywhere on arm64. Code that
// must match a two-rounding reference (product rounded, then the add) passes the product through this.
#pragma once

namespace qlora {

template <typename T>
inline T rounded(T v) {
#if defined(__x86_64__)
  __asm__("" : "+x"(v));
#elif defined(__aarch64__)
  __asm__("" : "+w"(v));
#endif
  return v;
}

}  // namespace qlora
