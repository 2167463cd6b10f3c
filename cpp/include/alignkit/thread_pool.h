// A small persistent thread pool for the CPU kernels.
//
// Threads are created once (lazily) and reused: spawning threads per call would cost more
// than a decode step's attention. Size: env ALIGNKIT_NUM_THREADS, else
// std::thread::hardware_concurrency(). The calling thread works too, so a pool of size 1
// runs everything inline.
#pragma once

#include <cstdint>
#include <functional>

namespace alignkit {

/// Number of threads parallel_for uses (including the caller).
int num_threads();

/// Run fn(i) for i in [0, n) across the pool; returns when all are done.
/// `grain` = items per task claim (bigger for tiny items). Exceptions from fn are
/// rethrown in the caller (the first one wins). Small n runs inline.
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn, int64_t grain = 1);

}  // namespace alignkit
