// A fixed pool of compute threads for the CPU backend. execute(fn) hands a whole step to the
// pool's own driver thread (worker 0) and sleeps until it is done, so the step's caller (a libuv
// thread) holds no core; inside fn, run()/parallel_for() split loops over all workers, the driver
// taking part as worker 0. Dispatch is one atomic generation bump: workers spin briefly (a decode
// step issues dozens of parallel regions back to back) and then sleep on a condition variable, so
// an idle engine costs no CPU. Pool threads run at a slightly lower priority than the process's
// other threads (nice +NODESPEED_COMPUTE_NICE, default 2), so Node's event loop wins a contended
// core: heartbeats and gRPC keep flowing while a long prefill runs.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace ns::cpu {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_; }

  // Runs fn() on the driver thread and returns when it has finished (rethrowing what it threw).
  template <typename F>
  void execute(F&& fn) {
    auto trampoline = [](void* ctx) { (*static_cast<F*>(ctx))(); };
    submit(trampoline, &fn);
  }

  // Calls fn(worker) once for each worker in [0, size()) and returns when all are done.
  template <typename F>
  void run(F&& fn) {
    if (n_ == 1) {
      fn(0);
      return;
    }
    auto trampoline = [](void* ctx, int w) { (*static_cast<F*>(ctx))(w); };
    dispatch(trampoline, &fn);
  }

  // Splits [0, n) into size() contiguous ranges: fn(begin, end) per worker (static schedule,
  // for uniform work such as rows of a matrix product). `align` rounds range starts.
  template <typename F>
  void parallel_for(int64_t n, F&& fn, int64_t align = 1) {
    if (n <= 0) return;
    const int parts = static_cast<int>(std::min<int64_t>(n_, (n + align - 1) / align));
    run([&](int w) {
      if (w >= parts) return;
      int64_t units = (n + align - 1) / align;
      int64_t b = units * w / parts * align, e = units * (w + 1) / parts * align;
      if (e > n) e = n;
      if (b < e) fn(b, e);
    });
  }

  // fn(i) for every i in [0, n) handed out one at a time (dynamic schedule, for uneven work
  // such as causal attention rows).
  template <typename F>
  void parallel_dynamic(int64_t n, F&& fn) {
    if (n <= 0) return;
    std::atomic<int64_t> next{0};
    run([&](int w) {
      for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
           i = next.fetch_add(1, std::memory_order_relaxed))
        fn(i, w);
    });
  }

 private:
  using Call = void (*)(void*, int);
  using Job = void (*)(void*);
  void dispatch(Call call, void* ctx);
  void submit(Job job, void* ctx);
  void worker(int index);
  void driver();

  int n_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  Call call_ = nullptr;
  void* ctx_ = nullptr;

  // The driver thread and its one pending job.
  std::thread driver_;
  std::mutex job_mu_;
  std::condition_variable job_cv_;
  Job job_ = nullptr;
  void* job_ctx_ = nullptr;
  bool job_done_ = false;
  std::exception_ptr job_error_;
};

}  // namespace ns::cpu
