// addon.quantize: the one quantizer (common/quant.h) for the loader's quantize-at-load and for
// `nodespeed model quantize`, run off the JS thread (a 7B's down_proj is 45M elements).
#include "addon/quant_binding.h"

#include <memory>
#include <string>
#include <vector>

#include "addon/js_config.h"
#include "common/quant.h"

namespace ns::addon {

namespace {

class QuantizeWork : public Napi::AsyncWorker {
 public:
  QuantizeWork(Napi::Env env, Napi::Reference<Napi::Value> keep, const uint8_t* src, DType dt, size_t rows, size_t cols,
               WeightFormat fmt, size_t c0, size_t c1, std::string what)
      : Napi::AsyncWorker(env, "quantize"), keep_(std::move(keep)), src_(src), dt_(dt), rows_(rows), cols_(cols), fmt_(fmt),
        c0_(c0), c1_(c1), what_(std::move(what)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      q_.resize(rows_ * (c1_ - c0_));
      scales_.resize(rows_);
      quant::quantize_rows(src_, dt_, rows_, cols_, fmt_, c0_, c1_, q_.data(), scales_.data(), what_.c_str());
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object o = Napi::Object::New(env);
    Napi::Uint8Array q = Napi::Uint8Array::New(env, q_.size());
    std::copy(q_.begin(), q_.end(), q.Data());
    Napi::Float32Array s = Napi::Float32Array::New(env, scales_.size());
    std::copy(scales_.begin(), scales_.end(), s.Data());
    o.Set("data", q);
    o.Set("scales", s);
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Reference<Napi::Value> keep_;  // the source buffer stays alive while the worker reads it
  const uint8_t* src_;
  DType dt_;
  size_t rows_, cols_;
  WeightFormat fmt_;
  size_t c0_, c1_;
  std::string what_;
  Napi::Promise::Deferred deferred_;
  std::vector<uint8_t> q_;
  std::vector<float> scales_;
};

size_t Size(const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string("quantize: ") + what + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d != static_cast<double>(static_cast<size_t>(d)))
    throw Napi::RangeError::New(v.Env(), std::string("quantize: ") + what + " must be a non-negative integer");
  return static_cast<size_t>(d);
}

}  // namespace

Napi::Value Quantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsTypedArray())
    throw Napi::TypeError::New(env, "quantize(data: Uint8Array, dtype, rows, cols, format: 'int8' | 'fp8', c0?, c1?, what?)");
  Napi::TypedArray arr = info[0].As<Napi::TypedArray>();
  const DType dt = ParseDType(info[1], "quantize: dtype");
  const size_t rows = Size(info[2], "rows"), cols = Size(info[3], "cols");
  const WeightFormat fmt = ParseWeightFormat(info[4], "quantize: format");
  if (fmt == WeightFormat::Native) throw Napi::TypeError::New(env, "quantize: format must be 'int8' or 'fp8'");
  const size_t c0 = info.Length() > 5 && !info[5].IsUndefined() ? Size(info[5], "c0") : 0;
  const size_t c1 = info.Length() > 6 && !info[6].IsUndefined() ? Size(info[6], "c1") : cols;
  const std::string what = info.Length() > 7 && info[7].IsString() ? info[7].As<Napi::String>().Utf8Value() : "tensor";
  if (c0 > c1 || c1 > cols) throw Napi::RangeError::New(env, "quantize: columns [c0, c1) must lie within [0, cols]");
  if (arr.ByteLength() != rows * cols * dtype_size(dt))
    throw Napi::RangeError::New(env, "quantize(" + what + "): " + std::to_string(arr.ByteLength()) + " bytes for " +
                                         std::to_string(rows) + " x " + std::to_string(cols) + " " + DTypeName(dt));
  const uint8_t* src = static_cast<const uint8_t*>(arr.ArrayBuffer().Data()) + arr.ByteOffset();
  auto* w = new QuantizeWork(env, Napi::Persistent(info[0]), src, dt, rows, cols, fmt, c0, c1, what);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace ns::addon
