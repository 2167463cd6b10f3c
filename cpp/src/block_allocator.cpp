// Reference-counted KV block pool (see block_allocator.h).
#include "alignkit/block_allocator.h"

#include <stdexcept>
#include <string>

namespace alignkit {

BlockAllocator::BlockAllocator(int64_t num_blocks, int64_t block_size) : block_size_(block_size) {
  if (num_blocks < 1) throw std::invalid_argument("BlockAllocator: num_blocks must be >= 1, got " + std::to_string(num_blocks));
  if (block_size < 1) throw std::invalid_argument("BlockAllocator: block_size must be >= 1, got " + std::to_string(block_size));
  ref_.assign(static_cast<size_t>(num_blocks), 0);
  for (int64_t b = 0; b < num_blocks; ++b) free_.push_back(b);
}

void BlockAllocator::check_id(int64_t b, const char* op) const {
  if (b < 0 || b >= num_blocks())
    throw std::out_of_range(std::string("BlockAllocator.") + op + ": block id " + std::to_string(b) +
                            " is outside [0, " + std::to_string(num_blocks()) + ")");
}

int64_t BlockAllocator::allocate() {
  if (free_.empty())
    throw std::runtime_error("out of KV blocks: all " + std::to_string(num_blocks()) +
                             " blocks are in use (free finished sequences or enlarge the KV cache)");
  int64_t b = free_.front();
  free_.pop_front();
  ref_[b] = 1;
  return b;
}

void BlockAllocator::incref(int64_t b) {
  check_id(b, "incref");
  if (ref_[b] == 0) throw std::runtime_error("BlockAllocator.incref: block " + std::to_string(b) + " is free; allocate it first");
  ++ref_[b];
}

void BlockAllocator::decref(int64_t b) {
  check_id(b, "decref");
  if (ref_[b] == 0) throw std::runtime_error("BlockAllocator.decref: block " + std::to_string(b) + " is already free (double free)");
  if (--ref_[b] == 0) free_.push_back(b);
}

int BlockAllocator::refcount(int64_t b) const {
  check_id(b, "refcount");
  return ref_[b];
}

}  // namespace alignkit
