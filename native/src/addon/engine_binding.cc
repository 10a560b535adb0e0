// addon.Engine: a Backend behind a JS class. Every call that computes (loadTensor, finalize,
// step) runs on a libuv worker thread (Napi::AsyncWorker) and resolves a promise; a per-engine
// mutex serializes them, so the JS thread never waits on the backend.
//
// A step may be submitted while the one before it runs (the replica driver's run-ahead step): its
// decodes then take their input token from that step's sampled tokens (`tokenFrom`), filled in
// here under the mutex right before the backend's step, so the next step starts on the worker
// thread as soon as the previous one ends, with no trip through the JS thread in between. Such a
// step can be withdrawn until it starts (withdrawStep): it then runs nothing and resolves skipped.
#include "addon/engine_binding.h"

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "addon/comm_binding.h"
#include "addon/js_config.h"
#include "engine.h"

namespace ns::addon {

namespace {

// Shared by the JS object and its in-flight workers: dispose() may come while a step runs.
struct EngineState {
  std::mutex mu;
  // Calls run in the order JS made them (a step must not overtake the one before it): each worker
  // takes a ticket on the JS thread and waits for its turn. libuv starts queued work in FIFO
  // order, so the holder of the next ticket is always already running or first in line.
  std::condition_variable turn;
  uint64_t next_ticket = 0, now_serving = 0;
  std::unique_ptr<Backend> backend;
  bool disposed = false;
  // The last step that ran (under mu): whether it failed, its sampled tokens (a chained step's
  // tokenFrom indexes them) and when it ended (a step's gapMs: how long the backend sat between).
  enum class Last { kNone, kOk, kFailed } last = Last::kNone;
  std::vector<int32_t> last_sampled;
  std::chrono::steady_clock::time_point last_finished;
  // Steps queued and not started yet, by ticket: whether they were withdrawn. Its own mutex, never
  // held across a backend call, so withdrawStep on the JS thread never waits for a running step.
  std::mutex pend_mu;
  std::unordered_map<uint64_t, bool> pending;
  int hidden = 0;
  int kv_block_size = 0;
  DType compute = DType::F32;

  // A call taking its turn: true when it was withdrawn (it runs nothing).
  bool TakeWithdrawn(uint64_t ticket) {
    std::lock_guard<std::mutex> lock(pend_mu);
    auto it = pending.find(ticket);
    if (it == pending.end()) return false;
    const bool withdrawn = it->second;
    pending.erase(it);
    return withdrawn;
  }
  // Under mu, a call done: the turn passes to the next call, over the withdrawn steps right behind
  // it, so the next step that runs starts now rather than after a wake-up of each withdrawn one's
  // thread (those find themselves passed over whenever they wake).
  void Advance() {
    ++now_serving;
    {
      std::lock_guard<std::mutex> lock(pend_mu);
      for (auto it = pending.find(now_serving); it != pending.end() && it->second; it = pending.find(now_serving)) {
        pending.erase(it);
        ++now_serving;
      }
    }
    turn.notify_all();
  }
};

// Runs fn() under the engine's mutex on a worker thread; resolve(env) builds the result.
class EngineWork : public Napi::AsyncWorker {
 public:
  using Fn = std::function<void(Backend&)>;
  using Resolve = std::function<Napi::Value(Napi::Env)>;
  // skipped: called instead of fn when the call was withdrawn (withdrawStep) before its turn.
  EngineWork(Napi::Env env, std::shared_ptr<EngineState> st, const char* what, Fn fn, Resolve resolve,
             std::function<void()> skipped = nullptr)
      : Napi::AsyncWorker(env, what), st_(std::move(st)), what_(what), fn_(std::move(fn)), resolve_(std::move(resolve)),
        skipped_(std::move(skipped)), deferred_(Napi::Promise::Deferred::New(env)), ticket_(st_->next_ticket++) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  uint64_t Ticket() const { return ticket_; }
  std::vector<Napi::Reference<Napi::Value>> keep;  // JS buffers the worker reads

 protected:
  void Execute() override {
    std::unique_lock<std::mutex> lock(st_->mu);
    st_->turn.wait(lock, [&] { return st_->now_serving >= ticket_; });
    if (st_->now_serving > ticket_) {  // withdrawn, and passed over by the call before it
      if (skipped_) skipped_();
      return;
    }
    if (st_->TakeWithdrawn(ticket_)) {
      if (skipped_) skipped_();
    } else if (st_->disposed || !st_->backend) {
      st_->backend.reset();
      SetError(std::string(what_) + ": the engine was disposed");
    } else {
      try {
        fn_(*st_->backend);
      } catch (const std::exception& e) {
        SetError(e.what());
      }
      if (st_->disposed) st_->backend.reset();  // dispose() came while this call ran
    }
    st_->Advance();
  }
  void OnOK() override {
    Napi::Env env = Env();
    try {
      deferred_.Resolve(resolve_ ? resolve_(env) : env.Undefined());
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  std::shared_ptr<EngineState> st_;
  const char* what_;
  Fn fn_;
  Resolve resolve_;
  std::function<void()> skipped_;
  Napi::Promise::Deferred deferred_;
  uint64_t ticket_;
};

// The parsed step request, owned by the worker: one copy of the packed ints, which the
// sequences' token and block-table pointers point into.
struct StepJob {
  uint64_t ticket = 0;
  std::vector<int32_t> ints;
  // A chained step (one packed with tokenFrom) depends on the step before it: per sequence whose
  // first token comes from that step's sampled tokens, (sequence, index in ints, tokenFrom).
  bool chained = false;
  struct Fill {
    size_t seq, at;
    int32_t from;
  };
  std::vector<Fill> fills;
  bool skipped = false;  // withdrawn before it started
  std::vector<std::vector<LogitBias>> biases;
  StepInput in;
  std::vector<uint8_t> hidden_in;
  StepOutput out;
  // Where a step's wall time goes, for the step trace: waiting for a worker thread and the calls
  // before it, the backend's step (launches, device work, copy-back), and the JS thread's delay in
  // taking the result. A driver whose step time grows with the host's load shows it here.
  using Clock = std::chrono::steady_clock;
  Clock::time_point called = Clock::now(), started, finished;
  double gap_ms = -1;  // the backend's idle time since the previous step ended, -1: none ran before
};

// The packed step request of src/native/step-pack.ts (keep the two in step): ints = [n, request
// flags, then n records of kSeqInts, then each sequence's tokens, block table and window block
// table]; floats = n x (temperature, topP).
constexpr size_t kHeadInts = 2;
constexpr size_t kSeqInts = 9;
enum SeqInt { kNTokens, kPos, kNBlocks, kNWindowBlocks, kTopK, kFlags, kSeedLo, kSeedHi, kTokenFrom };
enum ReqFlag : int32_t { kChained = 1 };
enum SeqFlag : int32_t { kSample = 1, kAllLogits = 2, kNativeSeed = 4, kExtras = 8 };

double Ms(StepJob::Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

class Engine : public Napi::ObjectWrap<Engine> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Engine",
                       {InstanceMethod("loadTensor", &Engine::LoadTensor), InstanceMethod("finalize", &Engine::Finalize),
                        InstanceMethod("setTpComm", &Engine::SetTpComm), InstanceMethod("stepPacked", &Engine::Step),
                        InstanceMethod("withdrawStep", &Engine::WithdrawStep),
                        InstanceMethod("describe", &Engine::Describe), InstanceMethod("dispose", &Engine::Dispose)});
  }

  explicit Engine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Engine>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "new Engine(config): config object required");
    std::string device;
    ShardConfig cfg = ParseShardConfig(info[0].As<Napi::Object>(), &device);
    st_ = std::make_shared<EngineState>();
    st_->hidden = cfg.hidden;
    st_->compute = cfg.compute;
    st_->kv_block_size = cfg.kv_block_size;
    try {
      st_->backend = device == "cuda" ? make_cuda_backend(cfg) : make_cpu_backend(cfg);
    } catch (const std::exception& e) {
      throw Napi::Error::New(env, e.what());
    }
  }

 private:
  void CheckLive(Napi::Env env, const char* what) {
    if (st_->disposed) throw Napi::Error::New(env, std::string(what) + ": the engine was disposed");
  }

  Napi::Value LoadTensor(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckLive(env, "loadTensor");
    if (info.Length() < 4 || !info[0].IsString() || !info[2].IsArray() || !info[3].IsTypedArray())
      throw Napi::TypeError::New(env, "loadTensor(name, dtype, shape: number[], data: Uint8Array)");
    std::string name = info[0].As<Napi::String>().Utf8Value();
    DType dt = ParseDType(info[1], "loadTensor(" + name + "): dtype", /*quantized=*/true);
    Napi::Array shape_js = info[2].As<Napi::Array>();
    std::vector<int64_t> shape;
    for (uint32_t i = 0; i < shape_js.Length(); ++i) {
      Napi::Value d = shape_js.Get(i);
      if (!d.IsNumber() || d.As<Napi::Number>().DoubleValue() < 0)
        throw Napi::TypeError::New(env, "loadTensor(" + name + "): shape must hold non-negative numbers");
      shape.push_back(d.As<Napi::Number>().Int64Value());
    }
    Napi::TypedArray arr = info[3].As<Napi::TypedArray>();
    const uint8_t* data = static_cast<const uint8_t*>(arr.ArrayBuffer().Data()) + arr.ByteOffset();
    size_t bytes = arr.ByteLength();
    auto* w = new EngineWork(env, st_, "loadTensor",
                             [name, dt, shape, data, bytes](Backend& b) { b.load_tensor(name, dt, shape, data, bytes); },
                             nullptr);
    w->keep.emplace_back(Napi::Persistent(info[3]));
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  Napi::Value Finalize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckLive(env, "finalize");
    auto blocks = std::make_shared<std::pair<int, int>>(0, 0);
    const int block_size = st_->kv_block_size;
    auto* w = new EngineWork(env, st_, "finalize",
                             [blocks](Backend& b) {
                               blocks->first = b.finalize();
                               blocks->second = b.window_blocks();
                             },
                             [blocks, block_size](Napi::Env e) {
                               Napi::Object o = Napi::Object::New(e);
                               o.Set("kvBlocks", blocks->first);
                               o.Set("kvWindowBlocks", blocks->second);
                               o.Set("kvBlockSize", block_size);
                               return static_cast<Napi::Value>(o);
                             });
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  void SetTpComm(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckLive(env, "setTpComm");
    std::shared_ptr<Communicator> comm = UnwrapComm(info[0]);
    std::unique_lock<std::mutex> lock(st_->mu, std::try_to_lock);
    if (!lock.owns_lock()) throw Napi::Error::New(env, "setTpComm: a step is running; set the communicator before stepping");
    try {
      st_->backend->set_tp_comm(std::move(comm));
    } catch (const std::exception& e) {
      throw Napi::Error::New(env, e.what());
    }
  }

  Napi::Value Step(const Napi::CallbackInfo& info);

  // withdrawStep(ticket): true when that step had not started (it will run nothing and resolve
  // skipped), false when it has started or ended (its result stands).
  Napi::Value WithdrawStep(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "withdrawStep(ticket: number)");
    const double t = info[0].As<Napi::Number>().DoubleValue();
    std::lock_guard<std::mutex> lock(st_->pend_mu);
    auto it = t >= 0 ? st_->pending.find(static_cast<uint64_t>(t)) : st_->pending.end();
    if (it == st_->pending.end()) return Napi::Boolean::New(env, false);
    it->second = true;
    return Napi::Boolean::New(env, true);
  }

  Napi::Value Describe(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckLive(env, "describe");
    std::unique_lock<std::mutex> lock(st_->mu, std::try_to_lock);
    if (!lock.owns_lock()) return Napi::String::New(env, "busy (a call is running)");
    return Napi::String::New(env, st_->backend->describe());
  }

  void Dispose(const Napi::CallbackInfo& info) {
    // Frees now if idle; otherwise the running call frees on its way out (no JS-thread wait).
    std::unique_lock<std::mutex> lock(st_->mu, std::try_to_lock);
    st_->disposed = true;
    if (lock.owns_lock()) st_->backend.reset();
  }

  std::shared_ptr<EngineState> st_;
};

// stepPacked(ints, floats, seqs, hiddenIn, wantLogits) -> { result: Promise, ticket }:
// src/native/step-pack.ts has checked the fields of every sequence and packed them, so a plain step
// reads no per-sequence object here; only a sequence flagged kNativeSeed or kExtras is read from
// seqs[i]. The buffers are still untrusted: every count is checked against their lengths before
// anything is read. A chained step's tokenFrom is checked against the previous step's sampled
// tokens when it runs (they do not exist before); a bad one rejects its promise, naming the field.
Napi::Value Engine::Step(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckLive(env, "step");
  if (info.Length() < 2 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
      !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw Napi::TypeError::New(env, "stepPacked(ints: Int32Array, floats: Float32Array, seqs, hiddenIn, wantLogits): "
                                    "the request packed by src/native/step-pack.ts");
  Napi::Int32Array ints = info[0].As<Napi::Int32Array>();
  Napi::Float32Array floats = info[1].As<Napi::Float32Array>();
  auto bad = [&](const std::string& why) { return Napi::RangeError::New(env, "step: malformed packed request: " + why); };
  const size_t len = ints.ElementLength();
  if (len < kHeadInts || ints[0] < 0) throw bad("no sequence count");
  const size_t n = static_cast<size_t>(ints[0]);
  if (ints[1] & ~kChained) throw bad("unknown request flags");
  if (len < kHeadInts + n * kSeqInts || floats.ElementLength() != 2 * n)
    throw bad(std::to_string(n) + " sequences need " + std::to_string(kHeadInts + n * kSeqInts) + "+ ints and " + std::to_string(2 * n) +
              " floats, got " + std::to_string(len) + " and " + std::to_string(floats.ElementLength()));
  auto job = std::make_shared<StepJob>();
  job->ints.assign(ints.Data(), ints.Data() + len);
  job->chained = ints[1] & kChained;
  job->biases.resize(n);
  job->in.seqs.resize(n);
  const int32_t* all = job->ints.data();
  const float* fl = floats.Data();
  size_t off = kHeadInts + n * kSeqInts;  // the next sequence's tokens
  size_t total_tokens = 0;
  // Field names for messages are built only on error.
  auto field = [](size_t i, const char* key) { return "step: seqs[" + std::to_string(i) + "]." + key; };
  // The next `count` ints of the data part; nullptr for none, as an empty JS array gave before.
  auto take = [&](size_t i, int32_t count, const char* what) -> const int32_t* {
    if (count < 0 || static_cast<size_t>(count) > len - off)
      throw bad("seqs[" + std::to_string(i) + "] has " + std::to_string(count) + " " + what + ", " + std::to_string(len - off) + " ints left");
    const int32_t* p = count ? all + off : nullptr;
    off += static_cast<size_t>(count);
    return p;
  };
  Napi::Array seqs;
  for (size_t i = 0; i < n; ++i) {
    const int32_t* h = all + kHeadInts + i * kSeqInts;
    const int32_t flags = h[kFlags];
    if (flags & ~(kSample | kAllLogits | kNativeSeed | kExtras)) throw bad("seqs[" + std::to_string(i) + "] has unknown flags");
    SeqInput& si = job->in.seqs[i];
    const size_t tokens_at = off;
    si.tokens = take(i, h[kNTokens], "tokens");
    si.n_tokens = h[kNTokens];
    if (h[kTokenFrom] != -1) {  // -1: its tokens are all given
      if (!job->chained) throw bad("seqs[" + std::to_string(i) + "] has a tokenFrom in a request that is not chained");
      if (h[kTokenFrom] < -1 || si.n_tokens < 1)
        throw Napi::RangeError::New(env, "step: tokenFrom[" + std::to_string(i) + "] is " + std::to_string(h[kTokenFrom]) + " for " +
                                             std::to_string(si.n_tokens) + " tokens: -1, or an index for its first token");
      job->fills.push_back({i, tokens_at, h[kTokenFrom]});
    }
    si.pos = h[kPos];
    si.block_table = take(i, h[kNBlocks], "blocks");
    si.n_blocks = h[kNBlocks];
    if (h[kNWindowBlocks] != -1) {  // -1: no window block table
      si.window_block_table = take(i, h[kNWindowBlocks], "window blocks");
      si.n_window_blocks = h[kNWindowBlocks];
    }
    si.sampling.temperature = fl[2 * i];
    si.sampling.top_k = h[kTopK];
    si.sampling.top_p = fl[2 * i + 1];
    si.sampling.seed = uint64_t(uint32_t(h[kSeedLo])) | uint64_t(uint32_t(h[kSeedHi])) << 32;
    si.sample = flags & kSample;
    si.all_logits = flags & kAllLogits;
    if (flags & (kNativeSeed | kExtras)) {
      // The rare fields, read from the sequence object: a seed that is not a non-negative safe
      // integer or a bigint below 2^64 (ParseSeed says what is wrong with it), and `sampling`.
      if (seqs.IsEmpty()) {
        if (info.Length() < 3 || !info[2].IsArray() || info[2].As<Napi::Array>().Length() != n)
          throw bad("seqs must be the array of " + std::to_string(n) + " sequences");
        seqs = info[2].As<Napi::Array>();
      }
      const Napi::Value sv = seqs.Get(static_cast<uint32_t>(i));
      if (!sv.IsObject()) throw bad("seqs[" + std::to_string(i) + "] is not an object");
      Napi::Object s = sv.As<Napi::Object>();
      if (flags & kNativeSeed) si.sampling.seed = ParseSeed(s.Get("seed"), field(i, "seed"));
      if (flags & kExtras) ParseSamplingExtras(s.Get("sampling"), &si.sampling, &job->biases[i], field(i, "sampling"));
    }
    total_tokens += static_cast<size_t>(si.n_tokens);
  }
  if (off != len) throw bad(std::to_string(len - off) + " ints left over after the last sequence");
  Napi::Value hidden = info.Length() > 3 ? info[3] : env.Undefined();
  if (!hidden.IsUndefined() && !hidden.IsNull()) {
    if (!hidden.IsTypedArray()) throw Napi::TypeError::New(env, "step: hiddenIn must be a Uint8Array");
    Napi::TypedArray h = hidden.As<Napi::TypedArray>();
    const size_t want = size_t(total_tokens) * st_->hidden * dtype_size(st_->compute);
    if (h.ByteLength() != want)
      throw Napi::RangeError::New(env, "step: hiddenIn has " + std::to_string(h.ByteLength()) + " bytes, expected " +
                                           std::to_string(want) + " (" + std::to_string(total_tokens) + " tokens x " +
                                           std::to_string(st_->hidden) + " x " + DTypeName(st_->compute) + ")");
    const uint8_t* p = static_cast<const uint8_t*>(h.ArrayBuffer().Data()) + h.ByteOffset();
    job->hidden_in.assign(p, p + want);
    job->in.hidden_in = job->hidden_in.data();
  }
  job->in.want_logits = info.Length() > 4 && info[4].IsBoolean() && info[4].As<Napi::Boolean>().Value();

  // Runs under the engine's mutex, in its turn (a withdrawn step runs nothing: the skipped callback
  // below, and the previous step's tokens stay the ones the next chained step reads); a chained
  // step fills its tokenFrom tokens from them first. Any failure (a bad tokenFrom included) marks
  // the step failed, so a chained step behind it fails too instead of running on tokens that were
  // never sampled.
  EngineState* st = st_.get();  // the worker holds st_ alive while it runs
  auto* w = new EngineWork(
      env, st_, "step",
      [job, st](Backend& b) {
        job->started = StepJob::Clock::now();
        if (st->last != EngineState::Last::kNone) job->gap_ms = Ms(job->started - st->last_finished);
        try {
          if (job->chained && st->last == EngineState::Last::kFailed)
            throw std::runtime_error("step: tokenFrom: the step before this chained one failed, so its tokens do not exist");
          for (const StepJob::Fill& f : job->fills) {
            const std::string name = "step: tokenFrom[" + std::to_string(f.seq) + "]";
            if (st->last == EngineState::Last::kNone)
              throw std::runtime_error(name + " is " + std::to_string(f.from) + ", but no step ran before this one");
            if (static_cast<size_t>(f.from) >= st->last_sampled.size())
              throw std::runtime_error(name + " is " + std::to_string(f.from) + ", but the previous step sampled " +
                                       std::to_string(st->last_sampled.size()) + " tokens");
            job->ints[f.at] = st->last_sampled[static_cast<size_t>(f.from)];
          }
          b.step(job->in, job->out);
        } catch (...) {
          job->finished = StepJob::Clock::now();
          st->last = EngineState::Last::kFailed;
          st->last_finished = job->finished;
          throw;
        }
        job->finished = StepJob::Clock::now();
        st->last = EngineState::Last::kOk;
        st->last_sampled = job->out.sampled;
        st->last_finished = job->finished;
      },
      [job](Napi::Env e) {
        Napi::Object o = Napi::Object::New(e);
        Napi::Object timing = Napi::Object::New(e);
        timing.Set("queueMs", Ms(job->started - job->called));
        timing.Set("runMs", Ms(job->finished - job->started));
        timing.Set("returnMs", Ms(StepJob::Clock::now() - job->finished));
        timing.Set("gapMs", job->gap_ms);
        o.Set("timing", timing);
        if (job->skipped) {
          o.Set("skipped", true);
          o.Set("sampled", Napi::Int32Array::New(e, 0));
          return static_cast<Napi::Value>(o);
        }
        const StepOutput& out = job->out;
        Napi::Int32Array sampled = Napi::Int32Array::New(e, out.sampled.size());
        std::copy(out.sampled.begin(), out.sampled.end(), sampled.Data());
        o.Set("sampled", sampled);
        if (job->in.want_logits) {
          Napi::Float32Array logits = Napi::Float32Array::New(e, out.logits.size());
          std::copy(out.logits.begin(), out.logits.end(), logits.Data());
          o.Set("logits", logits);
        }
        Napi::Value lp = LogprobsToJs(e, out);
        if (!lp.IsUndefined()) o.Set("logprobs", lp);
        if (!out.hidden_out.empty()) {
          Napi::Uint8Array h = Napi::Uint8Array::New(e, out.hidden_out.size());
          std::copy(out.hidden_out.begin(), out.hidden_out.end(), h.Data());
          o.Set("hiddenOut", h);
        }
        return static_cast<Napi::Value>(o);
      },
      [job] {
        job->skipped = true;
        job->started = job->finished = StepJob::Clock::now();
      });
  job->ticket = w->Ticket();
  {
    std::lock_guard<std::mutex> lock(st_->pend_mu);
    st_->pending.emplace(job->ticket, false);
  }
  Napi::Object ret = Napi::Object::New(env);
  ret.Set("result", w->Promise());
  ret.Set("ticket", Napi::Number::New(env, static_cast<double>(job->ticket)));
  w->Queue();
  return ret;
}

}  // namespace

void InitEngine(Napi::Env env, Napi::Object exports) { exports.Set("Engine", Engine::Define(env)); }

}  // namespace ns::addon
