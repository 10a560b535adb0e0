// addon.Comm: a TcpComm or NcclComm behind a JS class. Blocking ops go to the comm's own thread
// (comm_queue.h); abort() and asyncError() are synchronous and safe while an op is blocked.
#include "addon/comm_binding.h"

#include <cstring>
#include <string>
#include <vector>

#include "comm/comm_queue.h"
#include "comm/tcp_comm.h"
#ifdef NS_WITH_CUDA
#include "comm/nccl_comm.h"
#endif

namespace ns {
namespace {

Napi::FunctionReference* g_ctor = nullptr;  // for instanceof in UnwrapComm

struct View {  // bytes of a typed array / DataView / Buffer
  uint8_t* data = nullptr;
  size_t bytes = 0;
  napi_typedarray_type type = napi_uint8_array;
  bool typed = false;
};

View view_of(Napi::Env env, Napi::Value v, const std::string& what) {
  View r;
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    r.data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    r.bytes = ta.ByteLength();
    r.type = ta.TypedArrayType();
    r.typed = true;
    return r;
  }
  if (v.IsDataView()) {
    auto dv = v.As<Napi::DataView>();
    r.data = static_cast<uint8_t*>(dv.ArrayBuffer().Data()) + dv.ByteOffset();
    r.bytes = dv.ByteLength();
    return r;
  }
  throw Napi::TypeError::New(env, what + " must be a typed array (e.g. Float32Array, Uint8Array)");
}

int int_field(Napi::Env env, Napi::Object o, const char* key, int fallback, bool required) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) {
    if (required) throw Napi::TypeError::New(env, std::string("new Comm(opts): opts.") + key + " is required");
    return fallback;
  }
  if (!v.IsNumber()) throw Napi::TypeError::New(env, std::string("new Comm(opts): opts.") + key + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != double(int(d))) throw Napi::TypeError::New(env, std::string("new Comm(opts): opts.") + key + " must be an integer");
  return int(d);
}

class Comm : public Napi::ObjectWrap<Comm> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Comm",
                       {InstanceMethod("listen", &Comm::Listen), InstanceMethod("connect", &Comm::Connect),
                        InstanceMethod("init", &Comm::Init), InstanceMethod("allReduce", &Comm::AllReduce),
                        InstanceMethod("allGather", &Comm::AllGather), InstanceMethod("broadcast", &Comm::Broadcast),
                        InstanceMethod("send", &Comm::Send), InstanceMethod("recv", &Comm::Recv),
                        InstanceMethod("asyncError", &Comm::AsyncError), InstanceMethod("abort", &Comm::Abort),
                        InstanceMethod("refused", &Comm::Refused),
                        InstanceAccessor("encryptedLinks", &Comm::EncryptedLinks, nullptr),
                        InstanceAccessor("cryptoProvider", &Comm::CryptoProvider, nullptr),
                        InstanceAccessor("rank", &Comm::Rank, nullptr), InstanceAccessor("size", &Comm::Size, nullptr),
                        InstanceAccessor("kind", &Comm::Kind, nullptr),
                        InstanceAccessor("p2p", &Comm::P2p, nullptr)});
  }

  explicit Comm(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Comm>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject())
      throw Napi::TypeError::New(env, "new Comm(opts): opts object required ({ kind: 'tcp' | 'nccl', rank, size, ... })");
    Napi::Object o = info[0].As<Napi::Object>();
    Napi::Value kind = o.Get("kind");
    kind_ = kind.IsString() ? kind.As<Napi::String>().Utf8Value() : "";
    const int rank = int_field(env, o, "rank", 0, true), size = int_field(env, o, "size", 0, true);
    if (size < 1 || rank < 0 || rank >= size)
      throw Napi::RangeError::New(env, "new Comm(opts): rank " + std::to_string(rank) + " outside [0, size=" +
                                           std::to_string(size) + ")");
    if (kind_ == "tcp") {
      TcpCommOptions opts;
      Napi::Value context = o.Get("context");
      if (!context.IsUndefined() && !context.IsString())
        throw Napi::TypeError::New(env, "new Comm(opts): opts.context must be a string");
      if (context.IsString()) opts.context = context.As<Napi::String>().Utf8Value();
      Napi::Value key = o.Get("key");
      if (!key.IsUndefined()) {
        if (!key.IsTypedArray() || key.As<Napi::TypedArray>().ByteLength() != 32)
          throw Napi::TypeError::New(env, "new Comm(opts): opts.key must be the job's 32-byte key (Uint8Array)");
        View k = view_of(env, key, "opts.key");
        opts.key.assign(reinterpret_cast<const char*>(k.data), k.bytes);
      }
      Napi::Value encrypt = o.Get("encrypt");
      const std::string enc = encrypt.IsString() ? encrypt.As<Napi::String>().Utf8Value() : encrypt.IsUndefined() ? "off" : "?";
      if (enc == "off") opts.encrypt = TcpCommOptions::Encrypt::kOff;
      else if (enc == "cross-host") opts.encrypt = TcpCommOptions::Encrypt::kCrossHost;
      else if (enc == "all") opts.encrypt = TcpCommOptions::Encrypt::kAll;
      else throw Napi::TypeError::New(env, "new Comm(opts): opts.encrypt must be 'off', 'cross-host' or 'all'");
      opts.connect_timeout_ms = int_field(env, o, "connectTimeoutMs", opts.connect_timeout_ms, false);
      opts.handshake_timeout_ms = int_field(env, o, "handshakeTimeoutMs", opts.handshake_timeout_ms, false);
      opts.op_timeout_ms = int_field(env, o, "opTimeoutMs", opts.op_timeout_ms, false);
      tcp_ = std::make_shared<TcpComm>(rank, size, opts);
      comm_ = tcp_;
    } else if (kind_ == "nccl") {
#ifdef NS_WITH_CUDA
      std::string why = nccl_unavailable_reason();
      if (!why.empty()) throw Napi::Error::New(env, "nccl: unavailable (" + why + ")");
      Napi::Value id = o.Get("uniqueId");
      if (!id.IsTypedArray() || id.As<Napi::TypedArray>().ByteLength() != NS_NCCL_UNIQUE_ID_BYTES)
        throw Napi::TypeError::New(env, "new Comm(opts): opts.uniqueId must be the 128-byte Uint8Array of addon.ncclUniqueId()");
      View v = view_of(env, id, "opts.uniqueId");
      const int device = int_field(env, o, "deviceIndex", 0, false);
      const int timeout = int_field(env, o, "initTimeoutMs", 300000, false);
      try {
        nccl_ = std::make_shared<NcclComm>(rank, size, v.data, device, timeout);
      } catch (const std::exception& e) {
        throw Napi::Error::New(env, e.what());
      }
      comm_ = nccl_;
#else
      throw Napi::Error::New(env, "nccl: unavailable (this addon was built without CUDA)");
#endif
    } else {
      throw Napi::TypeError::New(env, "new Comm(opts): opts.kind must be 'tcp' or 'nccl'");
    }
    queue_ = std::make_unique<CommQueue>(env, ("nodespeed comm " + kind_).c_str());
  }

  ~Comm() override {
    // Only reachable with ops pending at environment teardown (an op holds a reference to its
    // Comm): abort so the comm thread is not stuck in a wait, then join it.
    if (queue_ && queue_->busy()) comm_->abort();
    queue_.reset();
  }

  std::shared_ptr<Communicator> comm() const { return comm_; }

 private:
  using Op = CommQueue::Op;

  Op* new_op(Napi::Env env) {
    Op* op = new Op(env);
    op->keep.emplace_back(Napi::Persistent(Value().As<Napi::Value>()));
    return op;
  }
  void keep(Op* op, Napi::Value v) { op->keep.emplace_back(Napi::Persistent(v)); }

  void need_tcp(Napi::Env env, const char* what) {
    if (!tcp_) throw Napi::Error::New(env, std::string(what) + ": only for kind 'tcp' (an NCCL comm uses init())");
  }

  Napi::Value Listen(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    need_tcp(env, "listen");
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "listen(host: string)");
    std::string host = info[0].As<Napi::String>().Utf8Value();
    auto port = std::make_shared<int>(0);
    Op* op = new_op(env);
    auto tcp = tcp_;
    op->run = [tcp, host, port] { *port = tcp->listen(host); };
    op->result = [port](Napi::Env e) { return Napi::Number::New(e, *port); };
    return queue_->submit(env, op);
  }

  Napi::Value Connect(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    need_tcp(env, "connect");
    if (info.Length() < 1 || !info[0].IsArray()) throw Napi::TypeError::New(env, "connect(addresses: string[])");
    Napi::Array a = info[0].As<Napi::Array>();
    std::vector<std::string> addrs;
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Value v = a.Get(i);
      if (!v.IsString()) throw Napi::TypeError::New(env, "connect(addresses): addresses[" + std::to_string(i) + "] must be a 'host:port' string");
      addrs.push_back(v.As<Napi::String>().Utf8Value());
    }
    Op* op = new_op(env);
    auto tcp = tcp_;
    op->run = [tcp, addrs] { tcp->connect(addrs); };
    return queue_->submit(env, op);
  }

  Napi::Value Init(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
#ifdef NS_WITH_CUDA
    if (nccl_) {
      Op* op = new_op(env);
      auto nccl = nccl_;
      op->run = [nccl] { nccl->init(); };
      return queue_->submit(env, op);
    }
#endif
    throw Napi::Error::New(env, "init: only for kind 'nccl' (a TCP comm uses listen() and connect())");
  }

  Napi::Value AllReduce(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1) throw Napi::TypeError::New(env, "allReduce(buf: Float32Array, dtype?: 'f32' | 'bf16' | 'f16')");
    View v = view_of(env, info[0], "allReduce(buf)");
    std::string dts = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value()
                                                              : (v.type == napi_float32_array ? "f32" : "");
    DType dt;
    if (dts == "f32") dt = DType::F32;
    else if (dts == "bf16") dt = DType::BF16;
    else if (dts == "f16") dt = DType::F16;
    else throw Napi::TypeError::New(env, "allReduce(buf, dtype): dtype must be 'f32', 'bf16' or 'f16' (required unless buf is a Float32Array)");
    if (v.bytes % dtype_size(dt))
      throw Napi::RangeError::New(env, "allReduce(buf): " + std::to_string(v.bytes) + " bytes is not a whole number of " + dts + " elements");
    const size_t count = v.bytes / dtype_size(dt);
    Op* op = new_op(env);
    keep(op, info[0]);
    uint8_t* data = v.data;
    if (tcp_) {
      auto c = tcp_;
      op->run = [c, data, count, dt] { c->all_reduce_sum(data, count, dt, nullptr); };
    }
#ifdef NS_WITH_CUDA
    if (nccl_) {
      auto c = nccl_;
      op->run = [c, data, count, dt] { c->host_all_reduce_sum(data, count, dt); };
    }
#endif
    return queue_->submit(env, op);
  }

  Napi::Value AllGather(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2) throw Napi::TypeError::New(env, "allGather(input: Uint8Array, output: Uint8Array)");
    View in = view_of(env, info[0], "allGather(input)"), out = view_of(env, info[1], "allGather(output)");
    const size_t n = size_t(comm_->size());
    if (out.bytes != in.bytes * n)
      throw Napi::RangeError::New(env, "allGather: output has " + std::to_string(out.bytes) + " bytes, expected size (" +
                                           std::to_string(n) + ") x input (" + std::to_string(in.bytes) + ")");
    Op* op = new_op(env);
    keep(op, info[0]);
    keep(op, info[1]);
    const uint8_t* i = in.data;
    uint8_t* o = out.data;
    const size_t bytes = in.bytes;
    if (tcp_) {
      auto c = tcp_;
      op->run = [c, i, o, bytes] { c->all_gather_bytes(i, o, bytes); };
    }
#ifdef NS_WITH_CUDA
    if (nccl_) {
      auto c = nccl_;
      op->run = [c, i, o, bytes] { c->host_all_gather(i, o, bytes); };
    }
#endif
    return queue_->submit(env, op);
  }

  int peer_arg(const Napi::CallbackInfo& info, const char* what) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[1].IsNumber()) throw Napi::TypeError::New(env, std::string(what) + "(buf, peer: number)");
    int p = info[1].As<Napi::Number>().Int32Value();
    if (p < 0 || p >= comm_->size())
      throw Napi::RangeError::New(env, std::string(what) + ": rank " + std::to_string(p) + " outside [0, " +
                                           std::to_string(comm_->size()) + ")");
    return p;
  }

  Napi::Value Broadcast(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    View v = view_of(env, info[0], "broadcast(buf)");
    int root = peer_arg(info, "broadcast");
    Op* op = new_op(env);
    keep(op, info[0]);
    uint8_t* d = v.data;
    size_t b = v.bytes;
    if (tcp_) { auto c = tcp_; op->run = [c, d, b, root] { c->broadcast(d, b, root, nullptr); }; }
#ifdef NS_WITH_CUDA
    if (nccl_) { auto c = nccl_; op->run = [c, d, b, root] { c->host_broadcast(d, b, root); }; }
#endif
    return queue_->submit(env, op);
  }

  Napi::Value Send(const Napi::CallbackInfo& info) { return PointToPoint(info, true); }
  Napi::Value Recv(const Napi::CallbackInfo& info) { return PointToPoint(info, false); }

  Napi::Value PointToPoint(const Napi::CallbackInfo& info, bool is_send) {
    Napi::Env env = info.Env();
    const char* what = is_send ? "send" : "recv";
    View v = view_of(env, info[0], std::string(what) + "(buf)");
    int peer = peer_arg(info, what);
    if (peer == comm_->rank())
      throw Napi::RangeError::New(env, std::string(what) + ": peer " + std::to_string(peer) + " is this rank");
    Op* op = new_op(env);
    keep(op, info[0]);
    uint8_t* d = v.data;
    size_t b = v.bytes;
    if (tcp_) {
      auto c = tcp_;
      if (is_send) op->run = [c, d, b, peer] { c->send(d, b, peer, nullptr); };
      else op->run = [c, d, b, peer] { c->recv(d, b, peer, nullptr); };
    }
#ifdef NS_WITH_CUDA
    if (nccl_) {
      auto c = nccl_;
      if (is_send) op->run = [c, d, b, peer] { c->host_send(d, b, peer); };
      else op->run = [c, d, b, peer] { c->host_recv(d, b, peer); };
    }
#endif
    return queue_->submit(env, op);
  }

  // Connections refused while forming the group, one line per address (TCP; [] for NCCL).
  Napi::Value Refused(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array out = Napi::Array::New(env);
    if (tcp_) {
      uint32_t i = 0;
      for (const auto& line : tcp_->refused()) out.Set(i++, Napi::String::New(env, line));
    }
    return out;
  }

  // Which OpenSSL the TCP comm's handshake and encryption use ("libcrypto.so.3", ..., "node").
  Napi::Value CryptoProvider(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), crypto_provider());
  }

  Napi::Value EncryptedLinks(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), tcp_ ? tcp_->encrypted_links() : 0);
  }

  Napi::Value AsyncError(const Napi::CallbackInfo& info) {
    std::string e;
    if (tcp_) e = tcp_->async_error();
#ifdef NS_WITH_CUDA
    if (nccl_) e = nccl_->async_error();
#endif
    return e.empty() ? info.Env().Null() : Napi::String::New(info.Env(), e);
  }

  Napi::Value Abort(const Napi::CallbackInfo& info) {
    comm_->abort();
    return info.Env().Undefined();
  }

  Napi::Value Rank(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), comm_->rank()); }
  Napi::Value Size(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), comm_->size()); }
  Napi::Value Kind(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), kind_); }
  // NCCL: whether small collectives run as one-shot P2P kernels, or why not; null for TCP.
  Napi::Value P2p(const Napi::CallbackInfo& info) {
#ifdef NS_WITH_CUDA
    if (nccl_) return Napi::String::New(info.Env(), nccl_->p2p_status());
#endif
    return info.Env().Null();
  }

  std::string kind_;
  std::shared_ptr<Communicator> comm_;
  std::shared_ptr<TcpComm> tcp_;
#ifdef NS_WITH_CUDA
  std::shared_ptr<NcclComm> nccl_;
#endif
  std::unique_ptr<CommQueue> queue_;
};

Napi::Value NcclUniqueId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#ifdef NS_WITH_CUDA
  Napi::Uint8Array out = Napi::Uint8Array::New(env, NS_NCCL_UNIQUE_ID_BYTES);
  try {
    nccl_unique_id(out.Data());
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
  return out;
#else
  throw Napi::Error::New(env, "nccl: unavailable (this addon was built without CUDA)");
#endif
}

}  // namespace

void InitComm(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = Comm::Define(env);
  g_ctor = new Napi::FunctionReference(Napi::Persistent(ctor));  // lives as long as the process
  exports.Set("Comm", ctor);
  exports.Set("ncclUniqueId", Napi::Function::New(env, NcclUniqueId, "ncclUniqueId"));
}

std::shared_ptr<Communicator> UnwrapComm(Napi::Value value) {
  Napi::Env env = value.Env();
  if (!g_ctor || !value.IsObject() || !value.As<Napi::Object>().InstanceOf(g_ctor->Value()))
    throw Napi::TypeError::New(env, "expected an addon.Comm (from new addon.Comm({ kind, rank, size }))");
  return Comm::Unwrap(value.As<Napi::Object>())->comm();
}

}  // namespace ns
