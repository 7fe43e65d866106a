{
  "targets": [
    {
      # No MPI headers or libraries at build time: csrc/mpi.cc declares what it uses and dlopens libmpi.so.40.
      "target_name": "qlora_mpi",
      "sources": ["csrc/mpi.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++1y", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-O2"],
      "libraries": ["-ldl"]
    }
  ]
}
