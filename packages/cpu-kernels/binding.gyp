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
      # x86-64-v2 baseline; AVX2/FMA and AVX-512 paths are compiled per function with
      # __attribute__((target(...))) and chosen at run time (isa.h). Never -march=native.
      "cflags_cc": ["-std=c++17", "-O3", "-march=x86-64-v2", "-mtune=generic", "-fno-math-errno", "-pthread"],
      "ldflags": ["-pthread"]
    }
  ]
}
