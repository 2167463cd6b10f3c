// Continuous-batching scheduler (algorithm in scheduler.h).
#include "alignkit/scheduler.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

namespace alignkit {
namespace {
[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument(msg); }

/// num_blocks, checked before the allocator is built: block tables hold int32 ids and context
/// lengths are int32 (the kernels' layout), so neither the blocks nor the tokens they hold may pass 2**31.
int64_t table_addressable(int64_t num_blocks, int64_t block_size) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (num_blocks > kMax)
    bad("Scheduler: num_blocks must be < 2**31 (block tables are int32), got " + std::to_string(num_blocks));
  if (num_blocks > 0 && block_size > 0 && block_size > kMax / num_blocks)
    bad("Scheduler: num_blocks * block_size = " + std::to_string(num_blocks) + " * " + std::to_string(block_size) +
        " tokens must be < 2**31 (context lengths are int32); use fewer or smaller blocks");
  return num_blocks;
}
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

Scheduler::Scheduler(int64_t num_blocks, int64_t block_size, int64_t max_num_seqs, int64_t max_num_batched_tokens)
    : alloc_(table_addressable(num_blocks, block_size), block_size),
      block_size_(block_size),
      max_num_seqs_(max_num_seqs),
      max_num_batched_tokens_(max_num_batched_tokens) {
  if (max_num_seqs < 1) bad("Scheduler: max_num_seqs must be >= 1, got " + std::to_string(max_num_seqs));
  if (max_num_batched_tokens < 1)
    bad("Scheduler: max_num_batched_tokens must be >= 1, got " + std::to_string(max_num_batched_tokens));
}

void Scheduler::add_group(int64_t group_id, const std::vector<int64_t>& prompt, int64_t n, int64_t max_new_tokens,
                          const std::vector<int64_t>& stop_token_ids,
                          const std::vector<std::vector<int64_t>>& stop_sequences, int64_t seed) {
  const std::string who = "add_group(group_id=" + std::to_string(group_id) + "): ";
  if (prompt.empty()) bad(who + "the prompt is empty; every prompt needs at least one token (e.g. BOS)");
  if (n < 1 || n > kMaxGroupSize)
    bad(who + "n must be in [1, " + std::to_string(kMaxGroupSize) + "], got " + std::to_string(n) +
        " (a group's samples are forked at once; split a larger group into several)");
  if (max_new_tokens < 1) bad(who + "max_new_tokens must be >= 1, got " + std::to_string(max_new_tokens));
  for (int64_t t : prompt)
    if (t < 0) bad(who + "prompt token id " + std::to_string(t) + " is negative");
  for (const auto& s : stop_sequences)
    if (s.empty()) bad(who + "an empty stop sequence would stop at once; remove it");
  // Finished samples are reported by (group_id, sample_id): two live groups with one id could not be told apart.
  for (const auto& [id, seq] : seqs_)
    if (seq->group->id == group_id)
      bad(who + "a group with this id has unfinished samples; give every live group its own id");
  // The longest sequence computes prompt + max_new_tokens - 1 tokens (the last one is never fed back).
  // In uint64: with max_new_tokens near 2**63 the int64 sum would overflow and pass the check.
  const uint64_t tokens = static_cast<uint64_t>(prompt.size()) + static_cast<uint64_t>(max_new_tokens) - 1;
  const uint64_t need = tokens / block_size_ + (tokens % block_size_ != 0);
  if (need > static_cast<uint64_t>(alloc_.num_blocks()))
    bad(who + "a prompt of " + std::to_string(prompt.size()) + " tokens + max_new_tokens=" +
        std::to_string(max_new_tokens) + " needs " + std::to_string(need) + " KV blocks but the cache has only " +
        std::to_string(alloc_.num_blocks()) + "; enlarge the KV cache or lower max_new_tokens");
  auto g = std::make_shared<Group>(Group{group_id, n, max_new_tokens, seed, stop_token_ids, stop_sequences});
  auto s = std::make_unique<Sequence>();
  s->id = next_seq_id_++;
  s->group = std::move(g);
  s->sample_id = 0;
  s->forked = false;
  s->prompt_len = static_cast<int64_t>(prompt.size());
  s->tokens = prompt;
  waiting_.push_back(s.get());
  seqs_.emplace(s->id, std::move(s));
}

int64_t Scheduler::running_slots() const {
  int64_t n = 0;
  for (const Sequence* s : running_) n += s->slots();
  return n;
}

int64_t Scheduler::blocks_needed(const Sequence& s, int64_t chunk) const {
  const int64_t c = s.num_computed;
  const int64_t have = static_cast<int64_t>(s.table.size());
  const int64_t fresh = std::max<int64_t>(0, (c + chunk - 1) / block_size_ + 1 - have);
  // Writing into a shared partial block needs a private copy first.
  const bool cow = c / block_size_ < have && alloc_.refcount(s.table[c / block_size_]) > 1;
  return fresh + (cow ? 1 : 0);
}

void Scheduler::reserve_blocks(Sequence& s, int64_t chunk, StepPlan& plan) {
  const int64_t c = s.num_computed;
  const int64_t first = c / block_size_;
  if (first < static_cast<int64_t>(s.table.size()) && alloc_.refcount(s.table[first]) > 1) {
    const int64_t copy = alloc_.allocate();
    plan.copy_src.push_back(s.table[first]);
    plan.copy_dst.push_back(copy);
    alloc_.decref(s.table[first]);
    s.table[first] = copy;
  }
  const int64_t want = (c + chunk - 1) / block_size_ + 1;
  while (static_cast<int64_t>(s.table.size()) < want) s.table.push_back(alloc_.allocate());
}

void Scheduler::free_blocks(Sequence& s) {
  for (int64_t b : s.table) alloc_.decref(b);
  s.table.clear();
}

void Scheduler::preempt(Sequence& s) {
  free_blocks(s);
  s.num_computed = 0;
  s.in_running = false;
  running_.erase(std::find(running_.begin(), running_.end(), &s));
  waiting_.push_front(&s);
  ++num_preemptions_;
}

void Scheduler::fork(Sequence& parent, std::vector<Sequence*>& out) {
  parent.forked = true;
  out.push_back(&parent);
  auto pos = std::find(running_.begin(), running_.end(), &parent) + 1;
  for (int64_t i = 1; i < parent.group->n; ++i) {
    auto c = std::make_unique<Sequence>(parent);  // tokens, table, num_computed, flags
    c->id = next_seq_id_++;
    c->sample_id = i;
    for (int64_t b : c->table) alloc_.incref(b);
    out.push_back(c.get());
    pos = running_.insert(pos, c.get()) + 1;
    seqs_.emplace(c->id, std::move(c));
  }
}

void Scheduler::emit(Sequence& s, int64_t chunk, StepPlan& plan, std::vector<Sequence*>& plan_seqs) {
  const int64_t c = s.num_computed;
  for (int64_t p = c; p < c + chunk; ++p) {
    plan.input_ids.push_back(s.tokens[p]);
    plan.positions.push_back(p);
    plan.slot_mapping.push_back(s.table[p / block_size_] * block_size_ + p % block_size_);
  }
  if (static_cast<int64_t>(s.tokens.size()) == s.prompt_len) plan.num_prefill_tokens += chunk;
  s.num_computed += chunk;
  s.scheduled_now = true;
  plan.context_lens.push_back(static_cast<int32_t>(s.num_computed));
  plan.query_start_loc.push_back(plan.query_start_loc.back() + static_cast<int32_t>(chunk));
  plan_seqs.push_back(&s);
  if (s.num_computed < static_cast<int64_t>(s.tokens.size())) return;  // prefill continues next step
  std::vector<Sequence*> samplers;
  if (s.forked) samplers.push_back(&s);
  else fork(s, samplers);
  const int64_t row = static_cast<int64_t>(plan.input_ids.size()) - 1;
  for (Sequence* x : samplers) {
    x->awaiting_sample = true;
    x->scheduled_now = true;
    plan.logits_indices.push_back(row);
    plan.sample_seq_ids.push_back(x->id);
    plan.sample_ids.push_back(x->sample_id);
    plan.sample_positions.push_back(static_cast<int64_t>(x->tokens.size()));
    plan.sample_seeds.push_back(x->group->seed);
    plan.sample_group_ids.push_back(x->group->id);
  }
}

StepPlan Scheduler::schedule() {
  if (pending_update_)
    throw std::runtime_error("Scheduler.schedule(): the previous step's samples were not delivered; call update() first");
  StepPlan plan;
  plan.query_start_loc.push_back(0);
  std::vector<Sequence*> plan_seqs;
  int64_t budget = max_num_batched_tokens_;
  bool preempted = false;
  for (Sequence* s : running_) s->scheduled_now = false;

  // Schedules `chunk` tokens of running sequence s, preempting newer unscheduled ones for blocks.
  auto run_one = [&](Sequence* s, int64_t chunk) {
    while (blocks_needed(*s, chunk) > alloc_.num_free()) {
      Sequence* victim = nullptr;
      for (auto it = running_.rbegin(); it != running_.rend(); ++it)
        if (!(*it)->scheduled_now) {
          victim = *it;
          break;
        }
      preempt(*victim);  // s itself is unscheduled, so a victim always exists
      preempted = true;
      if (victim == s) return;
    }
    reserve_blocks(*s, chunk, plan);
    emit(*s, chunk, plan, plan_seqs);
    budget -= chunk;
  };
  for (int pass = 0; pass < 2; ++pass) {  // pass 0: decodes, pass 1: unfinished prefills
    const std::vector<Sequence*> snapshot = running_;
    for (Sequence* s : snapshot) {
      if (budget == 0 || static_cast<int64_t>(plan_seqs.size()) == max_num_seqs_) break;
      if (!s->in_running || s->scheduled_now) continue;
      const int64_t need = static_cast<int64_t>(s->tokens.size()) - s->num_computed;
      if ((pass == 0) != (need == 1)) continue;
      run_one(s, std::min(need, budget));
    }
  }
  if (!preempted) {
    int64_t slots = running_slots();
    while (!waiting_.empty() && budget > 0 && static_cast<int64_t>(plan_seqs.size()) < max_num_seqs_) {
      Sequence* s = waiting_.front();
      // A group larger than max_num_seqs is admitted alone; its samples then take turns.
      if (!running_.empty() && slots + s->slots() > max_num_seqs_) break;
      const int64_t chunk = std::min<int64_t>(static_cast<int64_t>(s->tokens.size()), budget);
      if (blocks_needed(*s, chunk) > alloc_.num_free()) break;
      waiting_.pop_front();
      running_.push_back(s);
      s->in_running = true;
      slots += s->slots();
      reserve_blocks(*s, chunk, plan);
      emit(*s, chunk, plan, plan_seqs);
      budget -= chunk;
    }
  }

  plan.num_seqs = static_cast<int64_t>(plan_seqs.size());
  plan.max_blocks = 1;
  for (const Sequence* s : plan_seqs) plan.max_blocks = std::max<int64_t>(plan.max_blocks, s->table.size());
  plan.block_tables.assign(static_cast<size_t>(plan.num_seqs * plan.max_blocks), 0);  // padding: block 0
  for (int64_t i = 0; i < plan.num_seqs; ++i)
    for (size_t b = 0; b < plan_seqs[i]->table.size(); ++b)
      plan.block_tables[i * plan.max_blocks + b] = static_cast<int32_t>(plan_seqs[i]->table[b]);
  pending_update_ = !plan.sample_seq_ids.empty();
  return plan;
}

std::vector<Finished> Scheduler::update(const std::vector<int64_t>& sample_seq_ids, const std::vector<int64_t>& tokens,
                                        const std::vector<float>& logprobs, const std::vector<float>& raw_logprobs) {
  const size_t R = sample_seq_ids.size();
  if (tokens.size() != R || logprobs.size() != R || raw_logprobs.size() != R)
    bad("Scheduler.update: sample_seq_ids, tokens, logprobs and raw_logprobs must have the same length (got " +
        std::to_string(R) + ", " + std::to_string(tokens.size()) + ", " + std::to_string(logprobs.size()) + ", " +
        std::to_string(raw_logprobs.size()) + ")");
  size_t awaiting = 0;
  for (Sequence* s : running_) awaiting += s->awaiting_sample ? 1 : 0;
  if (R != awaiting)
    bad("Scheduler.update: got " + std::to_string(R) + " samples but the last plan asked for " +
        std::to_string(awaiting) + "; pass one token per row of the plan's sample_seq_ids");
  std::vector<Sequence*> rows(R);
  for (size_t r = 0; r < R; ++r) {  // validate everything before changing anything
    auto it = seqs_.find(sample_seq_ids[r]);
    if (it == seqs_.end() || !it->second->awaiting_sample)
      bad("Scheduler.update: sample_seq_ids[" + std::to_string(r) + "] = " + std::to_string(sample_seq_ids[r]) +
          " is not a sequence awaiting a sample (pass the plan's sample_seq_ids unchanged)");
    if (tokens[r] < 0) bad("Scheduler.update: tokens[" + std::to_string(r) + "] = " + std::to_string(tokens[r]) + " is negative");
    rows[r] = it->second.get();
    for (size_t q = 0; q < r; ++q)
      if (rows[q] == rows[r]) bad("Scheduler.update: sequence " + std::to_string(sample_seq_ids[r]) + " appears twice");
  }
  std::vector<Finished> done;
  for (size_t r = 0; r < R; ++r) {
    Sequence& s = *rows[r];
    s.awaiting_sample = false;
    s.tokens.push_back(tokens[r]);
    s.logprobs.push_back(logprobs[r]);
    s.raw_logprobs.push_back(raw_logprobs[r]);
    const Group& g = *s.group;
    const int64_t gen = static_cast<int64_t>(s.tokens.size()) - s.prompt_len;
    const char* reason = nullptr;
    if (std::find(g.stop_token_ids.begin(), g.stop_token_ids.end(), tokens[r]) != g.stop_token_ids.end()) {
      reason = "stop";
    } else {
      for (const auto& stop : g.stop_sequences)
        if (static_cast<int64_t>(stop.size()) <= gen &&
            std::equal(stop.begin(), stop.end(), s.tokens.end() - static_cast<int64_t>(stop.size()))) {
          reason = "stop";
          break;
        }
    }
    if (!reason && gen >= g.max_new_tokens) reason = "length";
    if (!reason) continue;
    Finished f;
    f.group_id = g.id;
    f.sample_id = s.sample_id;
    f.token_ids.assign(s.tokens.begin() + s.prompt_len, s.tokens.end());
    f.logprobs = std::move(s.logprobs);
    f.raw_logprobs = std::move(s.raw_logprobs);
    f.finish_reason = reason;
    done.push_back(std::move(f));
    free_blocks(s);
    running_.erase(std::find(running_.begin(), running_.end(), &s));
    seqs_.erase(s.id);
  }
  pending_update_ = false;
  return done;
}

void Scheduler::check_invariants() const {
  auto fail = [](const std::string& m) { throw std::runtime_error("Scheduler invariant violated: " + m); };
  std::vector<int> expect(static_cast<size_t>(alloc_.num_blocks()), 0);
  int64_t n_running = 0, n_waiting = 0;
  for (const auto& [id, sp] : seqs_) {
    const Sequence& s = *sp;
    if (s.in_running) {
      ++n_running;
      if (static_cast<int64_t>(s.table.size()) != ceil_div(s.num_computed, block_size_))
        fail("sequence " + std::to_string(id) + " holds " + std::to_string(s.table.size()) + " blocks for " +
             std::to_string(s.num_computed) + " computed tokens");
    } else {
      ++n_waiting;
      if (!s.table.empty() || s.num_computed != 0) fail("waiting sequence " + std::to_string(id) + " holds blocks");
    }
    if (s.num_computed > static_cast<int64_t>(s.tokens.size())) fail("num_computed beyond the tokens");
    for (int64_t b : s.table) ++expect[b];
  }
  if (n_running != num_running() || n_waiting != num_waiting()) fail("queues disagree with the live sequences");
  std::vector<int> in_free(expect.size(), 0);
  for (int64_t b : alloc_.free_queue()) ++in_free[b];
  for (size_t b = 0; b < expect.size(); ++b) {
    const int rc = alloc_.refcount(static_cast<int64_t>(b));
    if (rc != expect[b])
      fail("block " + std::to_string(b) + " has refcount " + std::to_string(rc) + " but " +
           std::to_string(expect[b]) + " block-table references");
    if (in_free[b] != (rc == 0 ? 1 : 0)) fail("block " + std::to_string(b) + " is misfiled in the free queue");
  }
}

}  // namespace alignkit
