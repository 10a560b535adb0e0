// Element layout of one layer's paged KV cache (K and V alike), shared by the kernel that writes it
// (rope_kv.cu), the kernels that read it (attention.cu, attention_prefill.cu) and the host
// emulation and GPU tests, so that all of them agree by construction: token-major,
// [block][slot in block][kv head][head dim]: a token's kv heads side by side; one head's keys of a
// block are B rows of hd elements, nkv * hd apart (8 KiB on a 7B). A head-major layout (one head's
// B keys of a block contiguous, as vLLM's paged attention reads them) measured the same on an H200
// with the vectorised decode kernel (decode layer 4.25 TB/s in both, batch-64 step 11.9 vs 11.8 ms,
// bench/results/decode-ab-7f71916-h200.json), so there is one layout.
#pragma once

#include <cstddef>

#if defined(__CUDACC__)
#define NS_KV_HD __host__ __device__ __forceinline__
#else
#define NS_KV_HD inline
#endif

namespace ns::cuda {

// Offset (elements) of the row of kv head `kh` at slot `in_block` of cache block `block`.
NS_KV_HD size_t kv_offset(int block, int in_block, int kh, int nkv, int B, int hd) {
  return (((size_t)block * B + in_block) * nkv + kh) * hd;
}

}  // namespace ns::cuda
