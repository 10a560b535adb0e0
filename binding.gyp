# Builds build/Release/nodespeed.node. Sources are globbed per folder so adding a .cc file to
# native/src/{addon,cpu,comm,common} needs no edit here. `cuda=1` (set by scripts/build-native.mjs
# after scripts/build-cuda.mjs produced build/cuda/libnscuda.a) links the CUDA backend.
{
  "variables": {
    "cuda%": "0"
  },
  "targets": [
    {
      "target_name": "nodespeed",
      "sources": ["<!@(node -p \"['addon','cpu','comm','common'].flatMap(d=>{const p='native/src/'+d;try{return require('fs').readdirSync(p).filter(f=>f.endsWith('.cc')).sort().map(f=>p+'/'+f)}catch{return []}}).join(' ')\")"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native/src"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions", "-O2", "-O0"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++20", "-O2", "-O0"],
      "cflags": ["-O3", "-fexceptions", "-Wall", "-Wno-unused-parameter"],
      "cflags_cc": ["-O3", "-std=c++17", "-fexceptions", "-frtti", "-pthread"],
      "ldflags": ["-pthread"],
      "conditions": [
        ["cuda==1", {
          "defines": ["NS_WITH_CUDA"],
          "include_dirs": ["/usr/local/cuda/include"],
          "libraries": [
            "<(module_root_dir)/build/cuda/libnscuda.a",
            "/usr/local/cuda/lib64/libcudart_static.a",
            "-ldl", "-lrt", "-lpthread"
          ]
        }]
      ]
    }
  ]
}
