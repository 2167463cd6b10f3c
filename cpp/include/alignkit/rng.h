// Counter-based randomness for sampling: one uniform per (seed, sample_id, position).
//
// No generator state is carried between steps, so the token drawn for a sequence depends
// only on its seed, its index in the group and the position being sampled: the same
// whatever the batch composition, the row order, or whether the sequence was preempted
// and recomputed. The same function runs on the host and on CUDA devices.
#pragma once

#include <cstdint>

#include "alignkit/tensor.h"

namespace alignkit {

/// splitmix64 finaliser: a bijective 64-bit mix with good avalanche.
AK_HD uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// Uniform double in [0, 1) keyed by (seed, sample_id, position); 53 random bits.
AK_HD double counter_uniform(int64_t seed, int64_t sample_id, int64_t position) {
  uint64_t x = splitmix64(static_cast<uint64_t>(seed));
  x = splitmix64(x ^ (static_cast<uint64_t>(sample_id) * 0xD1B54A32D192ED03ull));
  x = splitmix64(x ^ (static_cast<uint64_t>(position) * 0x8CB92BA72F3D8DD7ull));
  return static_cast<double>(x >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace alignkit
