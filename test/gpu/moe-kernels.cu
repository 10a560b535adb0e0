// Kernel-level check of the mixture-of-experts kernels (native/src/cuda/moe.cu) on a GPU, without a
// model, in the order CudaBackend::moe_layer runs them:
//  - routing: the route kernel's ids and weights equal common/moe_route.h's route_topk (the CPU
//    backend's router) bit for bit, fused (<= 32 tokens) and split launches, 8..256 experts, ties;
//    the permutation is checked as a permutation (every local assignment one row of its expert,
//    experts in id order, padding tokens and other ranks' experts placed nowhere);
//  - layers at real shapes (Qwen1.5-MoE-A2.7B: hidden 2048, 60 experts of 1408, top 4, shared
//    expert 5632; Mixtral-like: hidden 1024, 8 experts of 896, top 2), bf16, tp 1 and one rank of
//    tp 2, decode (grouped GEMV, the shared expert inside it up to 8 tokens) and prefill-sized steps
//    (tensor-core tiles), then the combine alone and fused with the residual add + next RMSNorm,
//    against a double-precision mixture of experts on the same bf16 inputs (error relative to the
//    largest |output|);
//  - decode steps that route inside the gate|up launch (moe::route_in_gemv): the same layer again
//    with the routing done by the grouped GEMV's blocks gives the route kernel's metadata word for
//    word and the same combine output bit for bit (the residual + norm run then routes that way).
// If the MoE families of test/gpu/families.test.ts fail, this says whether the kernels or the plumbing
// is off. Built and run by test/gpu/moe-kernels.test.ts; by hand (repo root, on the GPU host):
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Inative/src \
//     test/gpu/moe-kernels.cu native/src/cuda/moe.cu -o /tmp/moe-kernels && /tmp/moe-kernels
//   (one JSON line on stdout; exit 1 on failure)
// Every case is logged to stderr as it begins and ends (elapsed ms, split into the host's weight
// generation, the host reference and the GPU waits). Every wait for the GPU is a watchdog: past
// kStallMs the program prints `STALL <case> <what>` and the routing metadata's counts (read by the
// copy engine on a non-blocking stream while the kernel runs), one JSON line naming the stalled
// case, and exits 3. Weights are drawn on the GPU (a counter hash,
// uniform with the intended standard deviation) and the reference runs on every host core.
#include <cuda_bf16.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/moe_route.h"
#include "cuda/cuda_common.h"
#include "cuda/moe.h"

namespace ns::cuda {
static bool g_pdl = false;
bool pdl_enabled() { return g_pdl; }  // as the engine: on from compute capability 9.0 (cuda_backend.cu's needs the whole backend)
int round_mask() { return 0; }         // the engine's default (NODESPEED_CUDA_ROUND unset; kernels_basic.cu's)
}  // namespace ns::cuda

using ns::DType;
using namespace ns::cuda;
namespace route = ns::moe;  // common/moe_route.h (moe:: below is the CUDA plan, moe_plan.h)

namespace {

std::string g_fail;
void expect(bool ok, const std::string& what) {
  if (!ok && g_fail.empty()) g_fail = what;
}

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) { std::printf("{\"ok\":false,\"error\":\"%s: %s\"}\n", what, cudaGetErrorString(e)); std::exit(1); }
}

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// The case being run, for the stderr log and the watchdog.
struct Case {
  std::string name;
  Clock::time_point t0;
  double gen_ms = 0, ref_ms = 0, gpu_ms = 0;
  const int32_t* meta = nullptr;  // its routing metadata (device), for a stall report
  moe::Layout L{};
} g_case;
const Clock::time_point g_t0 = Clock::now();
constexpr double kStallMs = 10000;

void begin_case(const std::string& name) {
  g_case = Case{};
  g_case.name = name;
  g_case.t0 = Clock::now();
  std::fprintf(stderr, "BEGIN %s (t=%.0f ms)\n", name.c_str(), ms_since(g_t0));
  std::fflush(stderr);
}
void end_case() {
  std::fprintf(stderr, "END %s %.1f ms (host weights %.1f, host reference %.1f, gpu waits %.1f)%s\n", g_case.name.c_str(),
               ms_since(g_case.t0), g_case.gen_ms, g_case.ref_ms, g_case.gpu_ms, g_fail.empty() ? "" : (" first failure so far: " + g_fail).c_str());
  std::fflush(stderr);
  g_case.meta = nullptr;
}

// The stall report: the case, what was awaited, and the metadata words as the GPU holds them now
// (a copy on a non-blocking stream, so it runs beside the stuck kernel), then exit 3 without the
// runtime's teardown (which would wait for the kernel).
[[noreturn]] void stall(const char* what, double waited) {
  std::fprintf(stderr, "STALL %s: %s not done after %.0f ms\n", g_case.name.c_str(), what, waited);
  std::string words = "unread";
  if (g_case.meta) {
    const moe::Layout& L = g_case.L;
    cudaStream_t peek = nullptr;
    int32_t* h = nullptr;
    if (cudaStreamCreateWithFlags(&peek, cudaStreamNonBlocking) == cudaSuccess && cudaMallocHost(&h, 3 * sizeof(int32_t)) == cudaSuccess) {
      cudaMemcpyAsync(h, g_case.meta + L.n_active, 3 * sizeof(int32_t), cudaMemcpyDeviceToHost, peek);  // n_active, n_tiles, n_rows
      const Clock::time_point t0 = Clock::now();
      cudaError_t e;
      while ((e = cudaStreamQuery(peek)) == cudaErrorNotReady && ms_since(t0) < 3000) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (e == cudaSuccess) {
        words = "n_active " + std::to_string(h[0]) + " n_tiles " + std::to_string(h[1]) + " n_rows " + std::to_string(h[2]);
      } else {
        words = std::string("copy failed: ") + cudaGetErrorString(e);
      }
    }
  }
  std::fprintf(stderr, "STALL words: %s\n", words.c_str());
  std::fflush(stderr);
  std::printf("{\"ok\":false,\"stall\":\"%s\",\"waitingFor\":\"%s\",\"words\":\"%s\",\"firstFailure\":\"%s\"}\n", g_case.name.c_str(), what,
              words.c_str(), g_fail.c_str());
  std::fflush(stdout);
  std::_Exit(3);
}

// Waits for everything enqueued so far (the legacy default stream, where the test launches), polling
// an event up to kStallMs.
void gpu_wait(const char* what) {
  const Clock::time_point t0 = Clock::now();
  cudaEvent_t ev;
  ck(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
  ck(cudaEventRecord(ev, nullptr), "cudaEventRecord");
  cudaError_t e;
  while ((e = cudaEventQuery(ev)) == cudaErrorNotReady) {
    if (ms_since(t0) > kStallMs) stall(what, ms_since(t0));
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  ck(e, what);
  cudaEventDestroy(ev);
  g_case.gpu_ms += ms_since(t0);
}

template <typename X>
X* upload(const std::vector<X>& h) {
  X* d = nullptr;
  ck(cudaMalloc(&d, std::max<size_t>(h.size(), 1) * sizeof(X)), "cudaMalloc");
  if (!h.empty()) ck(cudaMemcpy(d, h.data(), h.size() * sizeof(X), cudaMemcpyHostToDevice), "upload");
  return d;
}
template <typename X>
std::vector<X> download(const X* d, size_t n, const char* what = "kernels") {
  std::vector<X> h(n);
  gpu_wait(what);
  if (n) ck(cudaMemcpy(h.data(), d, n * sizeof(X), cudaMemcpyDeviceToHost), "download");
  return h;
}

using bf = __nv_bfloat16;
float f(bf v) { return __bfloat162float(v); }
bf b(float v) { return __float2bfloat16(v); }
uint32_t bits(float v) { uint32_t u; std::memcpy(&u, &v, 4); return u; }

// Weights drawn on the device: uniform on [-sd sqrt 3, sd sqrt 3) (standard deviation sd) from a
// counter hash (splitmix64) of (seed, index); a draw of the host's normal generator per weight took
// ~17 ns, minutes for the 128-expert cases.
__global__ void fill_uniform(bf* out, size_t n, float sd, unsigned long long seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    unsigned long long z = seed + 0x9e3779b97f4a7c15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float u = (float)(z >> 40) * (1.f / 16777216.f);  // [0, 1)
    out[i] = __float2bfloat16((2.f * u - 1.f) * 1.7320508f * sd);
  }
}
// n weights on the device (*d) and their host copy.
std::vector<bf> rnd_dev(bf** d, size_t n, float sd, std::mt19937& rng) {
  const Clock::time_point t0 = Clock::now();
  ck(cudaMalloc(d, std::max<size_t>(n, 1) * sizeof(bf)), "cudaMalloc");
  const unsigned long long seed = ((unsigned long long)rng() << 32) | rng();
  if (n) fill_uniform<<<1024, 256>>>(*d, n, sd, seed);
  ck(cudaGetLastError(), "fill_uniform");
  std::vector<bf> h = download(*d, n, "weight generation");
  g_case.gen_ms += ms_since(t0);
  return h;
}
// body(t) for t in [0, T) on every host core (the double reference of the large cases).
template <typename F>
void parallel_tokens(int T, F body) {
  const int n = std::max(1, std::min<int>(T, (int)std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int w = 0; w < n; ++w)
    pool.emplace_back([&, w] {
      for (int t = w; t < T; t += n) body(t);
    });
  for (auto& th : pool) th.join();
}

// The permutation of one rank's assignments, checked as a permutation (what the later kernels rely on).
void check_meta(const std::vector<int32_t>& meta, const moe::Layout& L, const std::vector<int>& ids, const std::vector<int>& slot,
                int T, int K, int start, int local, const std::string& tag) {
  std::vector<int> rows_of(local, 0);
  std::vector<char> used((size_t)T * K, 0);
  int n_local = 0;
  for (int i = 0; i < T * K; ++i) {
    const int e = moe::local_expert(ids[i], start, local, slot[i / K] >= 0), row = meta[L.inv + i];
    if (e < 0) { expect(row == -1, tag + ": a foreign or padding assignment got a row"); continue; }
    ++n_local;
    ++rows_of[e];
    const bool in = row >= 0 && row < T * K;
    expect(in && !used[row], tag + ": row out of range or given twice");
    if (!in) continue;
    used[row] = 1;
    expect(meta[L.perm + row] == i / K, tag + ": perm does not name the assignment's token");
    int a = 0;
    while (a < meta[L.n_active] && meta[L.active_e + a] != e) ++a;
    expect(a < meta[L.n_active] && row >= meta[L.active_off + a] && row < meta[L.active_off + a] + meta[L.active_cnt + a],
           tag + ": row outside its expert's rows");
  }
  expect(meta[L.n_rows] == n_local, tag + ": n_rows");
  int next = 0, last = -1, tiles = 0;
  for (int a = 0; a < meta[L.n_active]; ++a) {
    const int e = meta[L.active_e + a], o = meta[L.active_off + a], c = meta[L.active_cnt + a];
    expect(e > last && e < local && c == rows_of[e] && o == next, tag + ": active expert list");
    last = e;
    next += c;
    tiles += (c + moe::kTileM - 1) / moe::kTileM;
  }
  expect(meta[L.n_tiles] == tiles, tag + ": tile count");
}

int g_route_cases = 0;

void check_routing(std::mt19937& rng) {
  for (int E : {8, 60, 64, 128, 256}) {
    begin_case("route E=" + std::to_string(E));
    for (int K : {1, 2, 4, 8})
      for (int T : {1, 32, 33, 300})
        for (int norm = 0; norm < 2; ++norm) {
          const int ld = E + (T % 2), tp = E >= 60 ? 2 : 1, rank = tp - 1;
          const int start = rank * E / tp, local = (rank + 1) * E / tp - start;
          std::normal_distribution<float> nd(0.f, T == 33 ? 8.f : 1.f);
          std::vector<float> logits((size_t)T * ld);
          for (auto& v : logits) v = nd(rng);
          for (int t = 0; t < T; t += 4)  // ties: equal logits give equal probabilities
            for (int e = 0; e < E; e += 3) logits[(size_t)t * ld + e] = logits[(size_t)t * ld];
          std::vector<int> slot(T);
          for (int t = 0; t < T; ++t) slot[t] = t % 7 == 5 ? -1 : t;
          const moe::Layout L = moe::layout(T + 5, K, local);
          float* d_logits = upload(logits);
          int32_t* d_slot = upload(std::vector<int32_t>(slot.begin(), slot.end()));
          int32_t* d_meta = upload(std::vector<int32_t>(L.words, -7));
          const std::string tag = "route E=" + std::to_string(E) + " K=" + std::to_string(K) + " T=" + std::to_string(T);
          g_case.meta = d_meta;
          g_case.L = L;
          moe_route({d_logits, ld, T, E, K, norm != 0, start, local, d_slot, d_meta, L}, nullptr);
          const std::vector<int32_t> meta = download(d_meta, L.words, tag.c_str());
          std::vector<int> ids((size_t)T * K);
          for (int t = 0; t < T; ++t) {
            std::vector<float> row(logits.begin() + (size_t)t * ld, logits.begin() + (size_t)t * ld + E), w(K);
            route::route_topk(row.data(), E, K, norm != 0, w.data(), &ids[(size_t)t * K]);
            for (int j = 0; j < K; ++j) {
              float dw;
              std::memcpy(&dw, &meta[L.w + t * K + j], 4);
              expect(meta[L.ids + t * K + j] == ids[(size_t)t * K + j], tag + ": ids differ from route_topk");
              expect(bits(dw) == bits(w[j]), tag + ": weights differ from route_topk in bits");
            }
          }
          check_meta(meta, L, ids, slot, T, K, start, local, tag);
          cudaFree(d_logits); cudaFree(d_slot); cudaFree(d_meta);
          ++g_route_cases;
        }
    end_case();
  }
}

struct LayerResult { std::string name; bool gemv; double err, ref; bool ok; };
std::vector<LayerResult> g_layers;

double silu(double g) { return g / (1.0 + std::exp(-g)); }

void check_layer(const char* name, int T, int E, int K, bool norm, int H, int I, int Is, int tp, int rank, std::mt19937& rng) {
  const int start = rank * E / tp, local = (rank + 1) * E / tp - start, ld = E + (Is > 0);
  std::string tag = std::string("layer ") + name + " T=" + std::to_string(T) +
                    (local < E ? " rank " + std::to_string(rank) + "/" + std::to_string(tp) : "");
  begin_case(tag);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto rnd = [&](size_t n, float sd) { std::vector<bf> v(n); for (auto& x : v) x = b(sd * nd(rng)); return v; };
  bf *d_gu, *d_dn, *d_sgu, *d_sdn;
  const std::vector<bf> gu = rnd_dev(&d_gu, (size_t)local * 2 * I * H, 0.02f, rng), dn = rnd_dev(&d_dn, (size_t)local * H * I, 0.02f, rng);
  const std::vector<bf> sgu = rnd_dev(&d_sgu, (size_t)2 * Is * H, 0.02f, rng), sdn = rnd_dev(&d_sdn, (size_t)H * Is, 0.02f, rng);
  const std::vector<bf> xb = rnd((size_t)T * H, 1.f);
  std::vector<float> logits((size_t)T * ld);
  for (auto& v : logits) v = nd(rng);
  std::vector<int32_t> slot(T);
  for (int t = 0; t < T; ++t) slot[t] = t % 5 == 3 && T > 1 ? -1 : t;  // padding tokens of a graph step
  const moe::Layout L = moe::layout(std::max(T, 256), K, local);  // a capacity larger than the step, as at run time
  const size_t rows = (size_t)T * K;
  bf* d_xb = upload(xb);
  float* d_logits = upload(logits);
  int32_t* d_slot = upload(slot);
  int32_t* d_meta = upload(std::vector<int32_t>(L.words, 0));
  g_case.meta = d_meta;
  g_case.L = L;
  bf* d_exgu = upload(std::vector<bf>(rows * 2 * I));
  bf* d_exact = upload(std::vector<bf>(rows * I));
  float* d_exout = upload(std::vector<float>(rows * H, NAN));
  bf* d_shact = upload(std::vector<bf>((size_t)T * std::max(Is, 1)));
  float* d_shout = upload(std::vector<float>((size_t)T * H, NAN));
  float* d_part = upload(std::vector<float>((size_t)T * H));
  cudaStream_t st = nullptr;
  const bool gemv = moe::use_gemv(T, K, E), shared_in_gemv = Is > 0 && gemv && T <= moe::kSharedInGemvTokens;
  const int groups = moe::max_active(T, K, local);
  const bool route_in = moe::route_in_gemv(T, K, E, local);
  // The step in moe_layer's order, ending in the combine `comb`; in_gemv: the routing inside the
  // gate|up launch instead of the route kernel.
  auto run = [&](const MoeCombineArgs& comb, bool in_gemv) {
    const MoeRouteArgs route{d_logits, ld, T, E, K, norm, start, local, d_slot, d_meta, L};
    if (!in_gemv) moe_route(route, st);
    if (gemv) {
      MoeGemvArgs g1{d_gu, (size_t)2 * I * H, I, H, d_xb, d_exact, groups, nullptr, 0, 0, nullptr, nullptr, 0, d_meta, L, false};
      MoeGemvArgs g2{d_dn, (size_t)H * I, H, I, d_exact, d_exout, groups, nullptr, 0, 0, nullptr, nullptr, 0, d_meta, L, false};
      g1.route_in = in_gemv;
      g1.route = route;
      if (shared_in_gemv) {
        g1.sw = d_sgu; g1.sn = Is; g1.sk = H; g1.sx = d_xb; g1.sy = d_shact; g1.s_rows = T;
        g2.sw = d_sdn; g2.sn = H; g2.sk = Is; g2.sx = d_shact; g2.sy = d_shout; g2.s_rows = T;
      }
      moe_gemv(DType::BF16, DType::BF16, g1, true, moe::gemv_tokens(T), st);
      moe_gemv(DType::BF16, DType::BF16, g2, false, moe::gemv_tokens(T), st);
    } else if (local > 0) {
      const int tiles = moe::max_tiles(T, K, local);
      moe_mma(DType::BF16, {d_xb, true, d_gu, (size_t)2 * I * H, 2 * I, H, d_exgu, false, tiles, d_meta, L}, st);
      moe_gated_act(DType::BF16, d_exgu, d_meta, L, T * K, I, false, d_exact, st);
      moe_mma(DType::BF16, {d_exact, false, d_dn, (size_t)H * I, H, I, d_exout, true, tiles, d_meta, L}, st);
    }
    moe_combine(DType::BF16, comb, st);
  };
  // The shared expert outside the grouped launches is cuBLAS's in the engine: here its product comes
  // from the host (computed below, uploaded before the launches run).
  std::vector<double> ref((size_t)T * H, 0.0);
  std::vector<float> sh_out_h((size_t)T * H, 0.f);
  const MoeCombineArgs part_only{d_exout, Is > 0 ? d_shout : nullptr, d_logits, ld, E, T, H, K, d_meta, L, d_part, nullptr, nullptr,
                                 nullptr, 1e-6f, nullptr};
  // Host double-precision reference with the kernels' roundings: activations to bf16 before down and,
  // for the routed experts on the tensor-core path, the gate and up products too (moe_mma writes
  // them to a bf16 buffer that moe_gated_act reads, as a bf16 gate_up projection does; the GEMV
  // path keeps them in f32 registers up to the activation). The reference runs the same algorithm
  // as the path under test, so the tolerance below measures accumulation error only.
  const Clock::time_point ref_t0 = Clock::now();
  std::vector<int> ids(rows);
  std::vector<float> wts(rows);
  for (int t = 0; t < T; ++t) {
    std::vector<float> row(logits.begin() + (size_t)t * ld, logits.begin() + (size_t)t * ld + E);
    route::route_topk(row.data(), E, K, norm, &wts[(size_t)t * K], &ids[(size_t)t * K]);
  }
  parallel_tokens(T, [&](int t) {
    auto mlp = [&](const bf* w_gu, const bf* w_dn, int n, double scale, bool into_shared, bool gu_bf16) {
      std::vector<float> act(n);
      for (int q = 0; q < n; ++q) {
        double g = 0, u = 0;
        for (int c = 0; c < H; ++c) {
          const double x = f(xb[(size_t)t * H + c]);
          g += f(w_gu[(size_t)q * H + c]) * x;
          u += f(w_gu[(size_t)(n + q) * H + c]) * x;
        }
        if (gu_bf16) { g = f(b((float)g)); u = f(b((float)u)); }
        act[q] = f(b((float)(silu(g) * u)));
      }
      for (int h = 0; h < H; ++h) {
        double y = 0;
        for (int q = 0; q < n; ++q) y += (double)f(w_dn[(size_t)h * n + q]) * act[q];
        ref[(size_t)t * H + h] += scale * y;
        if (into_shared) sh_out_h[(size_t)t * H + h] = (float)y;
      }
    };
    for (int j = 0; j < K; ++j) {
      const int e = moe::local_expert(ids[(size_t)t * K + j], start, local, slot[t] >= 0);
      if (e >= 0) mlp(gu.data() + (size_t)e * 2 * I * H, dn.data() + (size_t)e * H * I, I, wts[(size_t)t * K + j], false, !gemv);
    }
    // The shared expert here is the GEMV's (f32 gate/up) or this reference's own, uploaded below.
    if (Is > 0) mlp(sgu.data(), sdn.data(), Is, 1.0 / (1.0 + std::exp(-(double)logits[(size_t)t * ld + E])), true, false);
  });
  g_case.ref_ms += ms_since(ref_t0);
  if (Is > 0 && !shared_in_gemv) ck(cudaMemcpy(d_shout, sh_out_h.data(), 4 * sh_out_h.size(), cudaMemcpyHostToDevice), "shared");
  run(part_only, false);
  const std::vector<float> part = download(d_part, (size_t)T * H, "launches (first run)");
  const std::vector<int32_t> meta = download(d_meta, L.words);
  check_meta(meta, L, ids, std::vector<int>(slot.begin(), slot.end()), T, K, start, local, tag);
  bool routed_in_ok = true;
  if (route_in) {
    // Again with the routing inside the gate|up launch, from cleared metadata and outputs.
    ck(cudaMemset(d_meta, 0, 4 * (size_t)L.words), "clear meta");
    ck(cudaMemset(d_exout, 0xff, 4 * rows * H), "clear expert outputs");
    ck(cudaMemset(d_part, 0xff, 4 * (size_t)T * H), "clear part");
    run(part_only, true);
    const std::vector<float> part_in = download(d_part, (size_t)T * H, "launches (routing in the gate|up launch)");
    const std::vector<int32_t> meta_in = download(d_meta, L.words);
    routed_in_ok = meta_in == meta && std::memcmp(part_in.data(), part.data(), 4 * part.size()) == 0;
    expect(routed_in_ok, tag + ": routing inside the gate|up launch gives the route kernel's metadata and the same output bit for bit");
  }
  double err = 0, mref = 0;
  bool finite = true;
  for (size_t i = 0; i < part.size(); ++i) {
    finite &= std::isfinite(part[i]);
    err = std::max(err, std::fabs(part[i] - ref[i]));
    mref = std::max(mref, std::fabs(ref[i]));
  }
  // Both sides round the down products' inputs to bf16; what remains is f32 accumulation and a rare
  // rounding flip of one activation.
  bool ok = finite && err <= 3e-3 * mref;
  expect(ok, tag + ": combine vs double-precision mixture of experts");
  // The combine fused with the residual add and the next RMSNorm (tp 1): res += part, xb = bf16(rmsnorm(res) * w).
  std::vector<float> res((size_t)T * H), nw(H);
  for (auto& v : res) v = nd(rng);
  for (auto& v : nw) v = 1.f + 0.1f * nd(rng);
  float *d_res = upload(res), *d_nw = upload(nw);
  bf* d_next = upload(std::vector<bf>((size_t)T * H));
  // The whole step again, the combine now adding into the residual stream.
  run({d_exout, Is > 0 ? d_shout : nullptr, d_logits, ld, E, T, H, K, d_meta, L, d_part, d_res, nullptr, d_nw, 1e-6f, d_next}, route_in);
  const std::vector<float> res2 = download(d_res, res.size(), "launches (second run, residual + norm)");
  const std::vector<bf> next = download(d_next, res.size());
  double rerr = 0, nerr = 0;
  for (int t = 0; t < T; ++t) {
    double ss = 0;
    for (int h = 0; h < H; ++h) {
      const double r = res[(size_t)t * H + h] + part[(size_t)t * H + h];
      rerr = std::max(rerr, std::fabs(res2[(size_t)t * H + h] - r));
      ss += r * r;
    }
    const double inv = 1.0 / std::sqrt(ss / H + 1e-6);
    for (int h = 0; h < H; ++h) {
      const double want = res2[(size_t)t * H + h] * inv * nw[h];
      nerr = std::max(nerr, std::fabs(f(next[(size_t)t * H + h]) - want) / (std::fabs(want) + 1e-3));
    }
  }
  const bool fused_ok = rerr <= 1e-5 * (1 + mref) && nerr <= 1.6e-2;  // bf16 output (and the kRoundNorm rounding): 2^-7 relative
  expect(fused_ok, tag + ": combine fused with residual add + RMSNorm");
  ok &= fused_ok && routed_in_ok;
  g_layers.push_back({tag, gemv, err, mref, ok});
  for (void* p : {(void*)d_gu, (void*)d_dn, (void*)d_sgu, (void*)d_sdn, (void*)d_xb, (void*)d_logits, (void*)d_slot, (void*)d_meta,
                  (void*)d_exgu, (void*)d_exact, (void*)d_exout, (void*)d_shact, (void*)d_shout, (void*)d_part, (void*)d_res,
                  (void*)d_nw, (void*)d_next})
    cudaFree(p);
  end_case();
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  ck(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  g_pdl = prop.major >= 9;
  std::fprintf(stderr, "moe-kernels on %s (%d SMs), PDL %s\n", prop.name, prop.multiProcessorCount, g_pdl ? "on" : "off");
  std::mt19937 rng(7);
  check_routing(rng);
  // Qwen1.5-MoE-A2.7B's layer: decode 1 / 2 / 4 / 5 / 8 (GEMV, shared expert inside), 16 and 40
  // (GEMV, then tensor cores past T K > 4 E), both ranks of tp 2; Mixtral-like (8 experts: tiles
  // from 17 tokens); top 8 of 128 (qwen3_moe-like: 64 assignments a step of 8, the block permutation).
  for (int T : {1, 2, 4, 5, 8, 16, 40, 120}) check_layer("qwen2_moe", T, 60, 4, false, 2048, 1408, 5632, 1, 0, rng);
  for (int T : {1, 100}) check_layer("qwen2_moe", T, 60, 4, false, 2048, 1408, 2816, 2, 1, rng);
  check_layer("qwen2_moe", 3, 60, 4, false, 2048, 1408, 2816, 2, 0, rng);
  for (int T : {1, 3, 40, 130}) check_layer("mixtral", T, 8, 2, true, 1024, 896, 0, 1, 0, rng);
  for (int T : {1, 8}) check_layer("qwen3_moe", T, 128, 8, true, 2048, 768, 0, 1, 0, rng);
  bool ok = g_fail.empty();
  std::printf("{\"ok\":%s,\"gpu\":\"%s\",\"pdl\":%s,\"routeCases\":%d,\"firstFailure\":\"%s\",\"layers\":[", ok ? "true" : "false",
              prop.name, g_pdl ? "true" : "false", g_route_cases, g_fail.c_str());
  for (size_t i = 0; i < g_layers.size(); ++i)
    std::printf("%s{\"case\":\"%s\",\"path\":\"%s\",\"maxErr\":%.3g,\"maxRef\":%.3g,\"ok\":%s}", i ? "," : "", g_layers[i].name.c_str(),
                g_layers[i].gemv ? "gemv" : "mma", g_layers[i].err, g_layers[i].ref, g_layers[i].ok ? "true" : "false");
  std::printf("]}\n");
  return ok ? 0 : 1;
}
