{
  # CUDA addon (toolchain notes §3, Approach A): every csrc/kernels/*.cu goes through the nvcc rule,
  # every csrc/napi/*.cc and csrc/runtime/*.cc through g++; cudart is linked statically, so the
  # .node needs only a driver (r580+ for CUDA 13) at run time and loads fine without one.
  # scripts/build-native.mjs passes cuda_home and the -gencode list (QLORA_CUDA_ARCHS).
  "variables": {
    "cuda_home%": "/usr/local/cuda",
    "cuda_gencode%": "-gencode=arch=compute_80,code=sm_80",
    "nvcc%": "<(cuda_home)/bin/nvcc"
  },
  "targets": [
    {
      "target_name": "qlora_cuda",
      "sources": [
        "<!@(node -p \"['napi','runtime'].flatMap(d => require('fs').readdirSync('csrc/' + d).filter(f => f.endsWith('.cc')).map(f => 'csrc/' + d + '/' + f)).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('csrc/kernels').filter(f => f.endsWith('.cu')).map(f => 'csrc/kernels/' + f).join(' ')\")"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "csrc", "<(cuda_home)/include"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++1y", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-O2", "-fexceptions", "-pthread"],
      "ldflags": ["-pthread"],
      "libraries": ["<(cuda_home)/lib64/libcudart_static.a", "-ldl", "-lrt", "-lpthread"],
      "rules": [
        {
          "rule_name": "nvcc",
          "extension": "cu",
          # Headers are inputs too, so editing one recompiles the kernels that may use it.
          "inputs": ["<(RULE_INPUT_PATH)", "<!@(node -p \"['kernels','runtime'].flatMap(d => require('fs').readdirSync('csrc/' + d).filter(f => /\\.(h|cuh)$/.test(f)).map(f => 'csrc/' + d + '/' + f)).join(' ')\")"],
          "outputs": ["<(INTERMEDIATE_DIR)/<(RULE_INPUT_ROOT).o"],
          # No --use_fast_math: IEEE reciprocal/division and no FTZ (NF4 quantize is bit-exact).
          "action": ["<(nvcc)", "-std=c++17", "-O3", "-Xcompiler", "-fPIC", "<@(cuda_gencode)", "-Icsrc",
                     "-c", "<(RULE_INPUT_PATH)", "-o", "<(INTERMEDIATE_DIR)/<(RULE_INPUT_ROOT).o"],
          "message": "NVCC <(RULE_INPUT_PATH)",
          "process_outputs_as_sources": 1
        }
      ]
    }
  ]
}
