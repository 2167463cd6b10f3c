// Fixed-size KV blocks with reference counts and a FIFO free queue.
//
// A block is free at refcount 0 and sits in the free queue exactly once. Sequences that
// share a block (the samples of a group share their prompt's full blocks) each hold one
// reference; the block returns to the queue when the last holder lets go.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

namespace alignkit {

/// Reference-counted pool of KV-cache block ids [0, num_blocks).
class BlockAllocator {
 public:
  /// num_blocks >= 1, block_size >= 1 (std::invalid_argument otherwise).
  BlockAllocator(int64_t num_blocks, int64_t block_size);

  /// Takes a free block (refcount becomes 1); std::runtime_error("out of KV blocks ...") if none.
  int64_t allocate();
  /// Adds a holder to an allocated block (std::out_of_range for a bad id, runtime_error if free).
  void incref(int64_t b);
  /// Drops a holder; the block is freed at 0 (runtime_error if already free).
  void decref(int64_t b);
  /// Current holders of block b (0 = free).
  int refcount(int64_t b) const;

  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_blocks() const { return static_cast<int64_t>(ref_.size()); }
  int64_t block_size() const { return block_size_; }
  /// Ids in the free queue, front first (for invariant checks).
  const std::deque<int64_t>& free_queue() const { return free_; }

 private:
  void check_id(int64_t b, const char* op) const;
  int64_t block_size_;
  std::vector<int> ref_;
  std::deque<int64_t> free_;
};

}  // namespace alignkit
