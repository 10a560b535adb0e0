#include "cpu/thread_pool.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "common/settings.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NS_CPU_RELAX() _mm_pause()
#else
#define NS_CPU_RELAX() std::this_thread::yield()
#endif

namespace ns::cpu {

namespace {
// Workers spin ~20-50 µs before sleeping: longer than the gap between the parallel regions of one
// step, far shorter than the gap between steps. The caller, once its own share is done, spins
// briefly and then yields: if a worker was preempted (a shared machine), spinning would only keep
// it off the core it needs.
constexpr int kSpinIterations = 4000;
constexpr int kCallerSpinIterations = 1000;

// Lowers this thread's priority by the compute_nice setting (default 2; Linux nice is per thread).
void lower_priority() {
  const int inc = settings().compute_nice;
  if (inc <= 0) return;
  const id_t tid = static_cast<id_t>(syscall(SYS_gettid));
  errno = 0;
  const int now = getpriority(PRIO_PROCESS, tid);
  if (errno == 0) setpriority(PRIO_PROCESS, tid, std::min(19, now + inc));
}
}  // namespace

ThreadPool::ThreadPool(int threads) : n_(std::max(1, threads)) {
  threads_.reserve(n_ - 1);
  for (int i = 1; i < n_; ++i) threads_.emplace_back([this, i] { worker(i); });
  driver_ = std::thread([this] { driver(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  {
    std::lock_guard<std::mutex> lock(job_mu_);
  }
  job_cv_.notify_all();
  driver_.join();
}

void ThreadPool::submit(Job job, void* ctx) {
  std::unique_lock<std::mutex> lock(job_mu_);
  job_ = job;
  job_ctx_ = ctx;
  job_done_ = false;
  job_error_ = nullptr;
  job_cv_.notify_all();
  job_cv_.wait(lock, [&] { return job_done_; });
  if (job_error_) std::rethrow_exception(job_error_);
}

void ThreadPool::driver() {
  lower_priority();
  std::unique_lock<std::mutex> lock(job_mu_);
  for (;;) {
    job_cv_.wait(lock, [&] { return job_ != nullptr || stop_.load(); });
    if (stop_.load()) return;
    Job job = job_;
    void* ctx = job_ctx_;
    lock.unlock();
    std::exception_ptr error;
    try {
      job(ctx);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    job_ = nullptr;
    job_error_ = error;
    job_done_ = true;
    job_cv_.notify_all();
  }
}

void ThreadPool::dispatch(Call call, void* ctx) {
  call_ = call;
  ctx_ = ctx;
  pending_.store(n_ - 1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mu_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  cv_.notify_all();
  call(ctx, 0);
  for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins < kCallerSpinIterations) NS_CPU_RELAX();
    else std::this_thread::yield();
  }
}

void ThreadPool::worker(int index) {
  lower_priority();
  uint64_t seen = 0;
  for (;;) {
    uint64_t gen;
    int spins = 0;
    while ((gen = generation_.load(std::memory_order_acquire)) == seen) {
      if (++spins < kSpinIterations) {
        NS_CPU_RELAX();
        continue;
      }
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
    }
    seen = gen;
    if (stop_.load()) return;
    call_(ctx_, index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace ns::cpu
