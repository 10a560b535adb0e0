// One dedicated native thread per communicator: its blocking ops (connect, collectives,
// send/recv) run there strictly in submission order, so two collectives of one comm never
// interleave and a recv that waits for minutes holds no libuv pool thread. Completion goes back
// to the JS thread through a thread-safe function, which resolves or rejects the op's promise.
#pragma once

#include <napi.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ns {

class CommQueue {
 public:
  struct Op {
    std::function<void()> run;                              // comm thread; may throw
    std::function<Napi::Value(Napi::Env)> result;           // JS thread; undefined when empty
    std::vector<Napi::Reference<Napi::Value>> keep;         // buffers and the Comm object
    Napi::Promise::Deferred deferred;
    std::string error;
    explicit Op(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
  };

  explicit CommQueue(Napi::Env env, const char* name);
  ~CommQueue();  // stops the thread (callers abort the comm first if an op may be blocked)

  // JS thread: queue op, return its promise.
  Napi::Promise submit(Napi::Env env, Op* op);
  bool busy() const { return pending_ > 0; }
  void stop();

 private:
  void loop();
  static void complete(Napi::Env env, Napi::Function, Op* op);

  Napi::ThreadSafeFunction tsfn_;
  std::shared_ptr<std::atomic<bool>> tsfn_closed_;  // set by the TSFN's finalizer
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Op*> ops_;
  bool stopping_ = false;
  int pending_ = 0;   // JS thread only: ops submitted and not yet completed
  std::thread thread_;
};

}  // namespace ns
