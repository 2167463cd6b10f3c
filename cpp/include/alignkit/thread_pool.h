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

/// Make the calling thread's kernels use n threads (OpenMP builds: that thread's OpenMP thread
/// count, as torch.set_num_threads sets it; ALIGNKIT_NUM_THREADS still wins). No-op without OpenMP.
void set_num_threads(int n);

/// Run fn(i) for i in [0, n) across the pool; returns when all are done.
/// `grain` = items per task claim (bigger for tiny items). Exceptions from fn are
/// rethrown in the caller (the first one wins). Small n runs inline.
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn, int64_t grain = 1);

/// Length of the blocks parallel_blocks cuts [0, n) into: whole `unit`s, about four blocks per
/// thread, at most max_per long (0 = no cap) unless that is less than one unit.
int64_t block_length(int64_t n, int64_t unit, int64_t max_per);

/// Run body(b0, b1) over [0, n) cut into blocks of block_length(n, unit, max_per) (the last may be
/// shorter); all on the calling thread when `serial` (work too small to be worth waking the pool).
void parallel_blocks(int64_t n, int64_t unit, int64_t max_per, bool serial,
                     const std::function<void(int64_t, int64_t)>& body);

}  // namespace alignkit
