// Parallel loops for the CPU kernels.
//
// Built with OpenMP (the default where CMake finds it), the loops run on the process's OpenMP
// team, which torch and MKL use too: torch's wheel loads libgomp.so.1 and the dynamic loader
// gives this extension that same library, so the kernels and the GEMMs around them share hot
// threads instead of two pools spinning against each other on the same cores. Thread count:
// env ALIGNKIT_NUM_THREADS, else OpenMP's (what torch.set_num_threads set). A forked child runs
// inline (libgomp's team does not survive fork).
//
// Without OpenMP: a small persistent pool, threads created once (lazily) and reused; size
// ALIGNKIT_NUM_THREADS, else std::thread::hardware_concurrency(). The calling thread works too,
// so a size of 1 runs everything inline.
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
