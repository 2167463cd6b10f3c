// Continuous-batching scheduler with group sampling, copy-on-write forks and preemption
// by recompute.
//
// Central data: Sequence = token ids (prompt + generated), a block table, and
// num_computed (tokens whose K/V are in the cache; it only moves forward, except that a
// preempted sequence restarts from 0). A sequence "needs" tokens[num_computed:]; when a
// step computes its last needed token, that step's last row yields its next sample.
// Decode and (chunked) prefill are the same thing with 1 or more needed tokens.
//
// schedule(), one forward step under max_num_batched_tokens tokens and max_num_seqs seqs:
//   1. running sequences needing 1 token (decodes), oldest admitted first;
//   2. running sequences still prefilling (chunked), oldest first;
//   3. if nothing was preempted: admit waiting sequences FIFO while blocks, the token
//      budget and max_num_seqs allow (a group not yet forked counts as n sequences; a
//      group with n > max_num_seqs is admitted only into an empty batch, and its samples
//      then decode max_num_seqs at a time).
//   A step never holds more than max_num_seqs sequences nor max_num_batched_tokens tokens.
//   Before a sequence writes position p into a block with refcount > 1 (a fork's shared
//   partial block) it gets a private copy: a (src, dst) copy op the caller applies before
//   the forward. When a sequence lacks blocks, the most recently admitted sequence not
//   yet scheduled this step is preempted (possibly itself): its blocks are released and
//   it goes back to the FRONT of the waiting queue with num_computed = 0, to be
//   recomputed from prompt + generated tokens (same tokens: the RNG is keyed by
//   (seed, sample_id, position)).
//   Groups: a group enters as one sequence holding the prompt. When the step that
//   finishes its prefill is scheduled, it forks into n sequences sharing every block
//   (refcount n) and the step emits n sample rows pointing at the same logits row.
//   So a prompt is prefilled once per group unless preempted before it finished.
// update(): appends one sampled token per row, checks stop token ids, stop sequences
//   (matched on generated tokens; the stop tokens are kept) and max_new_tokens, and
//   frees a finished sequence's blocks at once.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "alignkit/block_allocator.h"

namespace alignkit {

/// Work for one forward step; arrays are row-major, see /tmp/sampler_api.md (README).
struct StepPlan {
  std::vector<int64_t> input_ids, positions, slot_mapping;
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks]
  int64_t num_seqs = 0, max_blocks = 0;
  std::vector<int32_t> context_lens, query_start_loc;
  std::vector<int64_t> copy_src, copy_dst;
  std::vector<int64_t> logits_indices, sample_seq_ids, sample_ids, sample_positions, sample_seeds, sample_group_ids;
  /// Prompt tokens computed in this step for sequences that had generated nothing (stats/tests).
  int64_t num_prefill_tokens = 0;
};

/// A sample that stopped: its generated tokens and their log-probs.
struct Finished {
  int64_t group_id = 0, sample_id = 0;
  std::vector<int64_t> token_ids;
  std::vector<float> logprobs, raw_logprobs;
  std::string finish_reason;  // "stop" | "length"
};

/// Continuous-batching scheduler over a BlockAllocator (algorithm in the file comment).
class Scheduler {
 public:
  /// Most samples in one group: they are forked at once, each holding a reference to every
  /// prompt block (int refcounts), and the Python Sampler splits groups by max_num_seqs anyway.
  static constexpr int64_t kMaxGroupSize = int64_t{1} << 20;

  Scheduler(int64_t num_blocks, int64_t block_size, int64_t max_num_seqs, int64_t max_num_batched_tokens);
  Scheduler(const Scheduler&) = delete;  // owns its sequences
  Scheduler& operator=(const Scheduler&) = delete;

  /// Queues a group of n samples of one prompt (std::invalid_argument for bad input).
  void add_group(int64_t group_id, const std::vector<int64_t>& prompt, int64_t n, int64_t max_new_tokens,
                 const std::vector<int64_t>& stop_token_ids, const std::vector<std::vector<int64_t>>& stop_sequences,
                 int64_t seed);
  /// Picks the next step's work (see file comment).
  StepPlan schedule();
  /// Applies one step's samples (rows in the plan's order); returns the samples that finished.
  std::vector<Finished> update(const std::vector<int64_t>& sample_seq_ids, const std::vector<int64_t>& tokens,
                               const std::vector<float>& logprobs, const std::vector<float>& raw_logprobs);
  /// Throws std::runtime_error if refcounts, free queue and block tables disagree.
  void check_invariants() const;

  bool has_unfinished() const { return !waiting_.empty() || !running_.empty(); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }
  const BlockAllocator& allocator() const { return alloc_; }

 private:
  struct Group {
    int64_t id, n, max_new_tokens, seed;
    std::vector<int64_t> stop_token_ids;
    std::vector<std::vector<int64_t>> stop_sequences;
  };
  struct Sequence {
    int64_t id;
    std::shared_ptr<const Group> group;
    int64_t sample_id;        // index in the group (0 for a group not yet forked)
    bool forked;              // false: still the group's single prompt sequence
    int64_t prompt_len;
    std::vector<int64_t> tokens;  // prompt + generated
    std::vector<float> logprobs, raw_logprobs;
    std::vector<int64_t> table;   // block ids
    int64_t num_computed = 0;
    bool awaiting_sample = false;  // scheduled to produce a sample; update() must deliver it
    bool in_running = false;
    bool scheduled_now = false;    // part of the step being planned (never a preemption victim)
    int64_t slots() const { return forked ? 1 : group->n; }
  };
  using SeqPtr = std::unique_ptr<Sequence>;

  int64_t blocks_needed(const Sequence& s, int64_t chunk) const;
  void reserve_blocks(Sequence& s, int64_t chunk, StepPlan& plan);
  void preempt(Sequence& s);
  void emit(Sequence& s, int64_t chunk, StepPlan& plan, std::vector<Sequence*>& plan_seqs);
  void fork(Sequence& parent, std::vector<Sequence*>& out);
  void free_blocks(Sequence& s);
  int64_t running_slots() const;

  BlockAllocator alloc_;
  int64_t block_size_, max_num_seqs_, max_num_batched_tokens_;
  std::deque<Sequence*> waiting_;           // FIFO; preempted sequences go to the front
  std::vector<Sequence*> running_;          // admission order, oldest first
  std::unordered_map<int64_t, SeqPtr> seqs_;  // every live sequence, by id
  int64_t next_seq_id_ = 0;
  int64_t num_preemptions_ = 0;
  bool pending_update_ = false;
};

}  // namespace alignkit
