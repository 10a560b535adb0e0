// LtGemm: see lt_gemm.h. The cuBLASLt declarations are written out (the build has no cuBLAS
// headers); values are those of cublasLt.h in CUDA 12/13.
#include "cuda/lt_gemm.h"

#include <cfloat>
#include <cstdint>
#include <mutex>

#include "common/dl.h"
#include "common/settings.h"

namespace ns::cuda {
namespace {

constexpr int kComputeF32 = 68;            // CUBLAS_COMPUTE_32F
constexpr int kDescTransA = 3;             // CUBLASLT_MATMUL_DESC_TRANSA
constexpr int kDescTransB = 4;             // CUBLASLT_MATMUL_DESC_TRANSB
constexpr int kDescAScale = 17;            // CUBLASLT_MATMUL_DESC_A_SCALE_POINTER
constexpr int kDescBScale = 18;            // CUBLASLT_MATMUL_DESC_B_SCALE_POINTER
constexpr int kDescAScaleMode = 31;        // CUBLASLT_MATMUL_DESC_A_SCALE_MODE (cuBLASLt 12.9+)
constexpr int kDescBScaleMode = 32;        // CUBLASLT_MATMUL_DESC_B_SCALE_MODE
constexpr int32_t kScaleOuterVec = 3;      // CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F
constexpr int kPrefMaxWorkspace = 1;       // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
constexpr int kLayoutBatchCount = 5;       // CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT (int32_t)
constexpr int kLayoutBatchStride = 6;      // CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET (int64_t, elements)
constexpr int32_t kOpN = 0, kOpT = 1;
constexpr size_t kWorkspace = 32u << 20;
constexpr int kCandidates = 8;
// The E4M3 GEMMs' tuning asks for more: at decode row counts the heuristic's first choice is a poor
// one (H100, batch-64 fp8 step of d91eb35, bench/results/batch-profile-fp8kv-b64-h100-d91eb35.json:
// 128x128 tiles over the weight rows, 32 CTAs for a 4096-row matrix, 3.91 ms for 6.48 GB = 1.66 TB/s).
constexpr int kFp8Candidates = 32;

}  // namespace

struct LtGemm::Algo { uint64_t data[8]; };  // cublasLtMatmulAlgo_t

struct LtGemm::Heuristic {                   // cublasLtMatmulHeuristicResult_t
  Algo algo;
  size_t workspace_size;
  int state;
  float waves;
  int reserved[4];
};
static_assert(sizeof(LtGemm::Heuristic) == 96, "cublasLtMatmulHeuristicResult_t is 96 bytes");

struct LtGemm::Api {
  int (*create)(void**) = nullptr;
  int (*destroy)(void*) = nullptr;
  int (*desc_create)(void**, int compute, cudaDataType scale) = nullptr;
  int (*desc_destroy)(void*) = nullptr;
  int (*desc_set)(void*, int attr, const void* buf, size_t bytes) = nullptr;
  int (*layout_create)(void**, cudaDataType, uint64_t rows, uint64_t cols, int64_t ld) = nullptr;
  int (*layout_destroy)(void*) = nullptr;
  int (*layout_set)(void*, int attr, const void* buf, size_t bytes) = nullptr;
  int (*pref_create)(void**) = nullptr;
  int (*pref_destroy)(void*) = nullptr;
  int (*pref_set)(void*, int attr, const void* buf, size_t bytes) = nullptr;
  int (*heuristic)(void* handle, void* desc, void* a, void* b, void* c, void* d, void* pref, int requested, Heuristic* out,
                   int* returned) = nullptr;
  int (*matmul)(void* handle, void* desc, const void* alpha, const void* A, void* a, const void* B, void* b, const void* beta,
                const void* C, void* c, void* D, void* d, const Algo* algo, void* ws, size_t ws_bytes, cudaStream_t) = nullptr;
  std::string error;
};

struct LtGemm::Plan {
  const Api* api = nullptr;
  void *desc = nullptr, *a = nullptr, *b = nullptr, *c = nullptr;
  bool use = false;  // false: cublasGemmEx measured faster (or no candidate ran)
  bool f32_faster = false;  // a scaled E4M3 plan declined: the f32 GEMM + epilogue was timed faster
  int parts = 1;            // an f32 E4M3 plan: K slices (strided batch); a declined scaled plan: the f32 form's
  Algo algo{};
  ~Plan() {
    if (desc) api->desc_destroy(desc);
    for (void* l : {a, b, c})
      if (l) api->layout_destroy(l);
  }
};

namespace {

const LtGemm::Api& lt_api() {
  static LtGemm::Api api;
  static std::once_flag once;
  std::call_once(once, [] {
    const dl::Library lib = dl::open_library("cuBLASLt", "NODESPEED_CUBLASLT", settings().cublaslt_path, {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"});
    if (!lib.handle) { api.error = lib.error; return; }
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dl::symbol(lib.handle, name));
      if (!fn && api.error.empty()) api.error = "cuBLASLt at " + lib.path + " lacks " + name;
    };
    sym(api.create, "cublasLtCreate");
    sym(api.destroy, "cublasLtDestroy");
    sym(api.desc_create, "cublasLtMatmulDescCreate");
    sym(api.desc_destroy, "cublasLtMatmulDescDestroy");
    sym(api.desc_set, "cublasLtMatmulDescSetAttribute");
    sym(api.layout_create, "cublasLtMatrixLayoutCreate");
    sym(api.layout_destroy, "cublasLtMatrixLayoutDestroy");
    sym(api.layout_set, "cublasLtMatrixLayoutSetAttribute");
    sym(api.pref_create, "cublasLtMatmulPreferenceCreate");
    sym(api.pref_destroy, "cublasLtMatmulPreferenceDestroy");
    sym(api.pref_set, "cublasLtMatmulPreferenceSetAttribute");
    sym(api.heuristic, "cublasLtMatmulAlgoGetHeuristic");
    sym(api.matmul, "cublasLtMatmul");
  });
  return api;
}

}  // namespace

std::unique_ptr<LtGemm> LtGemm::create(cudaStream_t stream, std::string* why) {
  const Api& api = lt_api();
  if (!api.error.empty()) {
    if (why) *why = api.error;
    return nullptr;
  }
  std::unique_ptr<LtGemm> g(new LtGemm());
  g->api_ = &api;
  g->stream_ = stream;
  if (api.create(&g->handle_) != 0) { if (why) *why = "cublasLtCreate failed"; return nullptr; }
  if (cudaMalloc(&g->workspace_, kWorkspace) != cudaSuccess || cudaEventCreate(&g->e0_) != cudaSuccess ||
      cudaEventCreate(&g->e1_) != cudaSuccess) {
    cudaGetLastError();
    if (why) *why = "no memory for the cuBLASLt workspace";
    return nullptr;
  }
  return g;
}

LtGemm::~LtGemm() {
  plans_.clear();
  fp8_plans_.clear();
  scaled_plans_.clear();
  if (handle_) api_->destroy(handle_);
  if (workspace_) cudaFree(workspace_);
  if (e0_) cudaEventDestroy(e0_);
  if (e1_) cudaEventDestroy(e1_);
}

// The plan of y[M, N] = x[M, K] · w[N, K]^T with inputs of type ab and y of type c, and cuBLASLt's
// heuristic candidates for it (n of them; 0 when the descriptors or the query failed).
// scaled: per-row scales of w and of x applied by cuBLASLt (outer-vector scaling: A = w^T's N
// columns get one scale each, B = x^T's M columns one each).
std::unique_ptr<LtGemm::Plan> LtGemm::plan(int M, int N, int K, cudaDataType ab, cudaDataType c, const Scales* scaled,
                                           Heuristic* res, int* n, int requested, int parts) const {
  auto p = std::make_unique<Plan>();
  p->api = api_;
  const Api& a = *api_;
  // Row-major y[M, N] = x[M, K] · w[N, K]^T is column-major y^T = w^T(op T) · x^T, as cublasGemmEx runs
  // it (and the "TN" layout E4M3 GEMMs require).
  // K slices: slice s of w and x starts s * K / parts elements into each row (rows still K apart),
  // its product lands s * M * N elements into y.
  const int ks = K / parts;
  p->parts = parts;
  bool ok = a.desc_create(&p->desc, kComputeF32, CUDA_R_32F) == 0 &&
            a.desc_set(p->desc, kDescTransA, &kOpT, sizeof kOpT) == 0 && a.desc_set(p->desc, kDescTransB, &kOpN, sizeof kOpN) == 0 &&
            a.layout_create(&p->a, ab, ks, N, K) == 0 && a.layout_create(&p->b, ab, ks, M, K) == 0 && a.layout_create(&p->c, c, N, M, N) == 0;
  if (ok && parts > 1) {
    const int32_t count = parts;
    const int64_t slice = ks, out = (int64_t)M * N;
    for (void* l : {p->a, p->b, p->c})
      ok = ok && a.layout_set(l, kLayoutBatchCount, &count, sizeof count) == 0 &&
           a.layout_set(l, kLayoutBatchStride, l == p->c ? &out : &slice, sizeof slice) == 0;
  }
  // An older cuBLASLt rejects the attribute: no candidates, the caller takes its other path.
  if (ok && scaled)
    ok = a.desc_set(p->desc, kDescAScaleMode, &kScaleOuterVec, sizeof kScaleOuterVec) == 0 &&
         a.desc_set(p->desc, kDescBScaleMode, &kScaleOuterVec, sizeof kScaleOuterVec) == 0 && set_scales(*p, *scaled);
  *n = 0;
  void* pref = nullptr;
  if (ok && a.pref_create(&pref) == 0) {
    if (!(a.pref_set(pref, kPrefMaxWorkspace, &kWorkspace, sizeof kWorkspace) == 0 &&
          a.heuristic(handle_, p->desc, p->a, p->b, p->c, p->c, pref, requested, res, n) == 0))
      *n = 0;
    a.pref_destroy(pref);
  }
  return p;
}

bool LtGemm::set_scales(const Plan& p, const Scales& s) const {
  return api_->desc_set(p.desc, kDescAScale, &s.w, sizeof s.w) == 0 && api_->desc_set(p.desc, kDescBScale, &s.x, sizeof s.x) == 0;
}

// Mean time of 2 * |weights| runs of `run` (each weight copy twice, in turn), after one untimed
// run; -1 when a run failed.
float LtGemm::time_us(const std::vector<const void*>& weights, const std::function<bool(const void*)>& run) {
  const int reps = 2 * static_cast<int>(weights.size());
  if (!run(weights[0])) return -1.f;
  cudaEventRecord(e0_, stream_);
  for (int r = 0; r < reps; ++r)
    if (!run(weights[r % weights.size()])) return -1.f;
  cudaEventRecord(e1_, stream_);
  if (cudaEventSynchronize(e1_) != cudaSuccess) { cudaGetLastError(); return -1.f; }
  float ms = 0.f;
  cudaEventElapsedTime(&ms, e0_, e1_);
  return 1000.f * ms / reps;
}

// The fastest of the heuristic candidates `res[0..n)` on `weights` (run(w, algo)), against a
// baseline time (`best`, in µs; FLT_MAX: none) that a candidate must beat by 2%; keeps it in p.
// Returns the time of what won (the baseline's when no candidate beat it).
float LtGemm::pick(Plan& p, const Heuristic* res, int n, float best, const std::vector<const void*>& weights,
                  const std::function<bool(const void* w, const Algo& algo)>& run) {
  for (int i = 0; i < n; ++i) {
    if (res[i].state != 0 || res[i].workspace_size > kWorkspace) continue;
    const float t = time_us(weights, [&](const void* w) { return run(w, res[i].algo); });
    if (t > 0.f && t < 0.98f * best) {  // a 2% margin: ties stay with the baseline (or the earlier candidate)
      best = t;
      p.algo = res[i].algo;
      p.use = true;
    }
  }
  return best;
}

void LtGemm::tune(const Shape& s, const std::vector<const void*>& weights, const void* x, void* y,
                  const std::function<void(const void* w)>& baseline) {
  if (weights.empty() || plans_.count(key(s))) return;
  Heuristic res[kCandidates];
  int n = 0;
  auto p = plan(s.M, s.N, s.K, s.ab, s.c, nullptr, res, &n, kCandidates);
  const float alpha = 1.f, beta = s.accumulate ? 1.f : 0.f;
  const float base = time_us(weights, [&](const void* w) { baseline(w); return true; });
  pick(*p, res, n, base, weights, [&](const void* w, const Algo& algo) {
    return api_->matmul(handle_, p->desc, &alpha, w, p->a, x, p->b, &beta, y, p->c, y, p->c, &algo, workspace_, kWorkspace, stream_) == 0;
  });
  plans_[key(s)] = std::move(p);
}

bool LtGemm::run(const Shape& s, const void* w, const void* x, void* y) {
  const auto it = plans_.find(key(s));
  if (it == plans_.end() || !it->second->use) return false;
  const Plan& p = *it->second;
  const float alpha = 1.f, beta = s.accumulate ? 1.f : 0.f;
  return api_->matmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &p.algo, workspace_, kWorkspace, stream_) == 0;
}

// The first usable heuristic candidate (the plan of a shape nobody tuned).
static void first_usable(LtGemm::Plan& p, const LtGemm::Heuristic* res, int n, size_t workspace) {
  for (int i = 0; i < n && !p.use; ++i)
    if (res[i].state == 0 && res[i].workspace_size <= workspace) {
      p.algo = res[i].algo;
      p.use = true;
    }
}

LtGemm::Plan* LtGemm::f32_plan(int M, int N, int K) {
  auto& slot = fp8_plans_[{M, N, K}];
  if (!slot) {
    Heuristic res[kCandidates];
    int n = 0;
    slot = plan(M, N, K, CUDA_R_8F_E4M3, CUDA_R_32F, nullptr, res, &n, kCandidates);
    first_usable(*slot, res, n, kWorkspace);
  }
  return slot.get();
}

bool LtGemm::fp8(int M, int N, int K, const void* w, const void* x, float* y, std::string* why) {
  const Api& a = *api_;
  Plan* slot = f32_plan(M, N, K);
  if (!slot->use) {
    if (why) *why = "cuBLASLt offers no E4M3 GEMM for M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K);
    return false;
  }
  const float alpha = 1.f, beta = 0.f;
  const int st = a.matmul(handle_, slot->desc, &alpha, w, slot->a, x, slot->b, &beta, y, slot->c, y, slot->c, &slot->algo, workspace_,
                          kWorkspace, stream_);
  if (st != 0 && why) *why = "cublasLtMatmul (E4M3, M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                             ") failed with status " + std::to_string(st);
  return st == 0;
}

// The scaled plan of a shape, planned on first use: with tune_on, the fastest candidate on those
// weights (its time in *best_us, FLT_MAX when none ran), else the heuristic's first choice.
LtGemm::Plan* LtGemm::scaled_plan(const Fp8& s, const Scales& sc, const std::vector<const void*>* tune_on, const void* x, void* y,
                                  float* best_us) {
  auto& slot = scaled_plans_[{s.M, s.N, s.K, static_cast<int>(s.c), s.accumulate}];
  if (slot) return slot.get();
  Heuristic res[kFp8Candidates];
  int n = 0;
  slot = plan(s.M, s.N, s.K, CUDA_R_8F_E4M3, s.c, &sc, res, &n, tune_on ? kFp8Candidates : kCandidates);
  if (!tune_on) {
    first_usable(*slot, res, n, kWorkspace);
    return slot.get();
  }
  Plan& p = *slot;
  const float alpha = 1.f, beta = s.accumulate ? 1.f : 0.f;
  const float t = pick(p, res, n, FLT_MAX, *tune_on, [&](const void* w, const Algo& algo) {
    return api_->matmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &algo, workspace_, kWorkspace, stream_) == 0;
  });
  if (best_us) *best_us = t;
  return slot.get();
}

void LtGemm::tune_fp8(const Fp8& s, const std::vector<const void*>& weights, const float* wscale, const void* x, const float* xscale,
                      void* y, const F32Form& f32) {
  if (weights.empty() || scaled_plans_.count({s.M, s.N, s.K, static_cast<int>(s.c), s.accumulate})) return;
  float scaled_us = FLT_MAX;
  Plan* sp = scaled_plan(s, {wscale, xscale}, &weights, x, y, &scaled_us);
  if (!f32.epilogue || fp8_plans_.count({f32.rows, s.N, s.K})) return;
  // The f32 form, whole and in K slices (16-element aligned, partials fitting acc): each one's
  // candidates timed with the epilogue after them; the fastest is kept for fp8().
  std::unique_ptr<Plan> best;
  float f32_us = FLT_MAX;
  for (int parts : {1, 2, 4}) {
    if (s.K % (16 * parts) != 0 || (size_t)parts * f32.rows * s.N > f32.acc_floats) continue;
    Heuristic res[kFp8Candidates];
    int n = 0;
    auto fp = plan(f32.rows, s.N, s.K, CUDA_R_8F_E4M3, CUDA_R_32F, nullptr, res, &n, kFp8Candidates, parts);
    Plan& p = *fp;
    const float alpha = 1.f, beta = 0.f;
    const float t = pick(p, res, n, FLT_MAX, weights, [&](const void* w, const Algo& algo) {
      if (api_->matmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, f32.acc, p.c, f32.acc, p.c, &algo, workspace_, kWorkspace,
                       stream_) != 0)
        return false;
      f32.epilogue(parts);
      return true;
    });
    if (p.use && (!best || t < 0.98f * f32_us)) {  // more slices only for a 2% gain
      best = std::move(fp);
      f32_us = t;
    }
  }
  if (!best) return;  // no f32 candidate ran: fp8() plans the shape's first choice if ever needed
  const int parts = best->parts;
  fp8_plans_[{f32.rows, s.N, s.K}] = std::move(best);
  // The same 2% margin as between candidates: a tie stays with the scaled form (one kernel).
  if (f32_us < 0.98f * scaled_us) {
    sp->use = false;
    sp->f32_faster = true;
    sp->parts = parts;
  }
}

int LtGemm::fp8_parts(int M, int N, int K) const {
  const auto it = fp8_plans_.find({M, N, K});
  return it == fp8_plans_.end() ? 1 : it->second->parts;
}

bool LtGemm::fp8_scaled(const Fp8& s, const void* w, const float* wscale, const void* x, const float* xscale, void* y,
                        std::string* why) {
  const Scales sc{wscale, xscale};
  Plan* p = scaled_plan(s, sc, nullptr, x, y, nullptr);
  if (!p->use) return false;
  const float alpha = 1.f, beta = s.accumulate ? 1.f : 0.f;
  // The scale pointers belong to the matrix and the step: set on the shared plan before each
  // enqueue (cuBLASLt reads the descriptor when the call is made, graph captures included).
  int st = set_scales(*p, sc) ? 0 : -1;
  if (st == 0)
    st = api_->matmul(handle_, p->desc, &alpha, w, p->a, x, p->b, &beta, y, p->c, y, p->c, &p->algo, workspace_, kWorkspace, stream_);
  if (st != 0 && why)
    *why = "cublasLtMatmul (E4M3 with per-row scales, M=" + std::to_string(s.M) + " N=" + std::to_string(s.N) + " K=" +
           std::to_string(s.K) + ") failed with status " + std::to_string(st);
  return st == 0;
}

std::string LtGemm::summary() const {
  size_t used = 0;
  for (const auto& [k, p] : plans_) used += p->use;
  return "cuBLASLt for " + std::to_string(used) + " of " + std::to_string(plans_.size()) + " tuned GEMM shapes";
}

std::string LtGemm::fp8_summary() const {
  size_t used = 0, f32 = 0, split = 0;
  for (const auto& [k, p] : scaled_plans_) {
    used += p->use;
    f32 += p->f32_faster;
    split += p->f32_faster && p->parts > 1;
  }
  return "E4M3 GEMMs scaled by cuBLASLt for " + std::to_string(used) + " of " + std::to_string(scaled_plans_.size()) +
         " shapes, f32 + epilogue for " + std::to_string(f32) + " (" + std::to_string(split) + " split over K)";
}

}  // namespace ns::cuda
