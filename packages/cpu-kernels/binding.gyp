{
  "targets": [
    {
      "target_name": "qlora_cpu",
      # Every csrc/*.cc is compiled; kernels register their N-API functions themselves (registry.h),
      # so adding a kernel file never touches a shared list.
      "sources": ["<!@(node -p \"require('fs').readdirSync('csrc').filter(f => f.endsWith('.cc')).map(f => 'csrc/' + f).join(' ')\")"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "csrc"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++1y", "-std=gnu++20"],
      # x86-64: x86-64-v2 baseline; AVX2/FMA and AVX-512 paths are compiled per function with
      # __attribute__((target(...))) and chosen at run time (isa.h). arm64: armv8-a, whose NEON is the
      # baseline (NEON GEMM/GEMV micro-kernels, the 128-bit level of the fused ops). Never -march=native.
      "cflags_cc": ["-std=c++17", "-O3", "-fno-math-errno", "-pthread"],
      "ldflags": ["-pthread"],
      "conditions": [
        ["target_arch=='x64'", {"cflags_cc": ["-march=x86-64-v2", "-mtune=generic"]}],
        ["target_arch=='arm64'", {"cflags_cc": ["-march=armv8-a"]}],
        # macOS (darwin-arm64 / darwin-x64 prebuilds): node-gyp's Xcode generator reads xcode_settings.
        ["OS=='mac'", {
          "xcode_settings": {
            "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
            "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
            "MACOSX_DEPLOYMENT_TARGET": "11.0",
            "OTHER_CPLUSPLUSFLAGS": ["-O3", "-fno-math-errno"]
          }
        }]
      ]
    }
  ]
}
