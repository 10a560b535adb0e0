#include "comm/comm_queue.h"

namespace ns {

CommQueue::CommQueue(Napi::Env env, const char* name) : tsfn_closed_(std::make_shared<std::atomic<bool>>(false)) {
  // At environment teardown Node closes the thread-safe function itself, possibly before the Comm
  // is finalized; the finalizer records that so stop() does not release a closed one.
  using Flag = std::shared_ptr<std::atomic<bool>>;
  tsfn_ = Napi::ThreadSafeFunction::New(
      env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), name, 0, 1,
      [](Napi::Env, Flag* closed) {
        (*closed)->store(true);
        delete closed;
      },
      new Flag(tsfn_closed_));
  tsfn_.Unref(env);  // an idle communicator must not keep the process alive
  thread_ = std::thread([this] { loop(); });
}

CommQueue::~CommQueue() { stop(); }

void CommQueue::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (!tsfn_closed_->load()) tsfn_.Release();
}

Napi::Promise CommQueue::submit(Napi::Env env, Op* op) {
  Napi::Promise p = op->deferred.Promise();
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) {
      op->deferred.Reject(Napi::Error::New(env, "comm: closed").Value());
      delete op;
      return p;
    }
    ops_.push_back(op);
  }
  if (pending_++ == 0) tsfn_.Ref(env);  // a pending op keeps the event loop alive
  op->keep.shrink_to_fit();
  cv_.notify_one();
  return p;
}

void CommQueue::loop() {
  for (;;) {
    Op* op;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !ops_.empty(); });
      if (ops_.empty()) return;  // stopping
      op = ops_.front();
      ops_.pop_front();
    }
    try {
      op->run();
    } catch (const std::exception& e) {
      op->error = e.what();
      if (op->error.empty()) op->error = "comm: unknown error";
    } catch (...) {
      op->error = "comm: unknown error";
    }
    // BlockingCall only fails while the environment is being torn down; the op (whose JS
    // references may only be released on the JS thread) is then left to the process exit.
    tsfn_.BlockingCall(op, [this](Napi::Env env, Napi::Function fn, Op* o) {
      complete(env, fn, o);
      if (--pending_ == 0) tsfn_.Unref(env);
    });
  }
}

void CommQueue::complete(Napi::Env env, Napi::Function, Op* op) {
  Napi::HandleScope scope(env);
  if (!op->error.empty()) {
    op->deferred.Reject(Napi::Error::New(env, op->error).Value());
  } else {
    try {
      op->deferred.Resolve(op->result ? op->result(env) : env.Undefined());
    } catch (const Napi::Error& e) {
      op->deferred.Reject(e.Value());
    }
  }
  delete op;
}

}  // namespace ns
