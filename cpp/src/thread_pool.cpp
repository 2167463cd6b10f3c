// Persistent worker pool behind parallel_for (see thread_pool.h).
#include "alignkit/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

#ifdef ALIGNKIT_WITH_OPENMP
#include <omp.h>
#include <pthread.h>
#endif

namespace alignkit {

#ifdef ALIGNKIT_WITH_OPENMP
// OpenMP build: the kernels run on the process's OpenMP team, the one torch and MKL use
// (torch's wheel loads libgomp.so.1 and the loader hands us that same library). Two pools on
// the same cores make each one's idle threads spin while the other works; one shared team does not.
namespace {

std::atomic<bool> forked_child{false};

void mark_forked_child() { forked_child.store(true); }

// Registered when the extension loads, before any parallel region of ours or torch's could have
// started libgomp's team in this process.
[[maybe_unused]] const int atfork_registered = pthread_atfork(nullptr, nullptr, mark_forked_child);

// Read once (as the pool build did): getenv with the GIL released would race os.environ writers.
const int env_threads = [] {
  const char* env = std::getenv("ALIGNKIT_NUM_THREADS");
  const int n = env ? std::atoi(env) : 0;
  return n >= 1 ? std::min(n, 256) : 0;
}();

}  // namespace

int num_threads() {
  // libgomp's team does not survive fork(): a child runs inline, as torch does.
  if (forked_child.load()) return 1;
  if (env_threads > 0) return env_threads;
  return std::max(1, omp_get_max_threads());  // torch.set_num_threads sets this
}

// OpenMP's thread count is per thread: torch.set_num_threads in the main thread does not reach a
// thread started later until torch touches its thread settings there, so the sampler passes it on.
void set_num_threads(int n) { omp_set_num_threads(std::clamp(n, 1, 256)); }  // the env var's cap

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int threads = static_cast<int>(std::min<int64_t>(num_threads(), (n + grain - 1) / grain));
  if (threads <= 1 || omp_in_parallel()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mu;
#pragma omp parallel num_threads(threads)
  {
    for (;;) {
      int64_t start = next.fetch_add(grain);
      if (start >= n) break;
      int64_t end = std::min(n, start + grain);
      try {
        for (int64_t i = start; i < end; ++i) fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lk(error_mu);
        if (!error) error = std::current_exception();
        next.store(n);  // stop handing out work
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

#else  // no OpenMP: our own persistent pool
namespace {

int configured_threads() {
  if (const char* env = std::getenv("ALIGNKIT_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) return std::min(n, 256);
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(std::min(hc, 256u));
}

/// One job at a time: workers claim chunks of [0, n) from an atomic counter.
class Pool {
 public:
  explicit Pool(int n) : size_(n) {
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { worker_loop(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return size_; }

  void run(int64_t n, const std::function<void(int64_t)>& fn, int64_t grain) {
    // Concurrent callers (GIL released in several Python threads) take turns.
    std::lock_guard<std::mutex> job_lock(job_mu_);
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_ = n;
      grain_ = std::max<int64_t>(1, grain);
      next_.store(0);
      error_ = nullptr;
      active_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    cv_.notify_all();
    work();
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return active_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void work() {
    for (;;) {
      int64_t start = next_.fetch_add(grain_);
      if (start >= n_) return;
      int64_t end = std::min(n_, start + grain_);
      try {
        for (int64_t i = start; i < end; ++i) (*fn_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
        next_.store(n_);  // stop handing out work
      }
    }
  }
  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      work();
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (--active_ == 0) done_cv_.notify_one();
      }
    }
  }

  int size_;
  std::vector<std::thread> workers_;
  std::mutex mu_, job_mu_;
  std::condition_variable cv_, done_cv_;
  bool stop_ = false;
  uint64_t generation_ = 0;
  int active_ = 0;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, grain_ = 1;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
};

Pool& pool() {
  // One pool per process: a child created by fork() inherits the pool object but not its
  // threads, so it builds its own (the inherited one is released, never joined).
  static std::mutex mu;
  static std::unique_ptr<Pool> holder;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lk(mu);
  if (!holder || owner != getpid()) {
    if (holder) (void)holder.release();  // its threads do not exist in this process
    holder = std::make_unique<Pool>(configured_threads());
    owner = getpid();
  }
  return *holder;
}

}  // namespace

int num_threads() { return pool().size(); }

void set_num_threads(int) {}  // the pool's size is fixed when it starts (thread_pool.h)

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (n <= grain || num_threads() == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  pool().run(n, fn, grain);
}

#endif  // ALIGNKIT_WITH_OPENMP

int64_t block_length(int64_t n, int64_t unit, int64_t max_per) {
  unit = std::max<int64_t>(1, unit);
  const int64_t threads = num_threads();
  int64_t per = (n + 4 * threads - 1) / (4 * threads);
  if (max_per > 0) per = std::min(per, max_per);
  return std::max(unit, (per + unit - 1) / unit * unit);
}

void parallel_blocks(int64_t n, int64_t unit, int64_t max_per, bool serial,
                     const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  const int64_t per = block_length(n, unit, max_per);
  const int64_t blocks = (n + per - 1) / per;
  parallel_for(blocks, [&](int64_t b) { body(b * per, std::min(n, b * per + per)); }, serial ? blocks : 1);
}

}  // namespace alignkit
