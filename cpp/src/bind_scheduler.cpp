// Python bindings of BlockAllocator, Scheduler, StepPlan and Finished.
//
// StepPlan fields are zero-copy torch tensors over the plan's vectors that keep the plan alive
// (rv_policy::reference_internal): the sampler needs only torch, not numpy.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "alignkit/scheduler.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace alignkit {
namespace {

template <class T>
using Vec1 = nb::ndarray<nb::pytorch, T, nb::ndim<1>>;

template <class T>
Vec1<T> view1(std::vector<T>& v) {
  if (v.empty()) v.reserve(1);  // a non-null pointer even for empty arrays
  return Vec1<T>(v.data(), {v.size()}, nb::handle());
}

template <class T>
void field(nb::class_<StepPlan>& c, const char* name, std::vector<T> StepPlan::*m, const char* doc) {
  c.def_prop_ro(name, [m](StepPlan& p) { return view1(p.*m); }, nb::rv_policy::reference_internal, doc);
}

}  // namespace

void bind_scheduler(nb::module_& m) {
  nb::class_<BlockAllocator>(m, "BlockAllocator", "Reference-counted pool of fixed-size KV blocks with a FIFO free queue.")
      .def(nb::init<int64_t, int64_t>(), "num_blocks"_a, "block_size"_a)
      .def("allocate", &BlockAllocator::allocate, "Take a free block (refcount 1); RuntimeError when none is free.")
      .def("incref", &BlockAllocator::incref, "b"_a, "Add a holder to an allocated block.")
      .def("decref", &BlockAllocator::decref, "b"_a, "Drop a holder; the block is freed at refcount 0.")
      .def("refcount", &BlockAllocator::refcount, "b"_a, "Holders of block b (0 = free).")
      .def_prop_ro("num_free", &BlockAllocator::num_free, "Blocks in the free queue.")
      .def_prop_ro("num_blocks", &BlockAllocator::num_blocks, "Total blocks.")
      .def_prop_ro("block_size", &BlockAllocator::block_size, "Tokens per block.");

  auto plan = nb::class_<StepPlan>(m, "StepPlan", "Work for one forward step (zero-copy torch tensors that keep the plan alive; apply copies first).");
  field(plan, "input_ids", &StepPlan::input_ids, "int64 [T] token ids of the step, sequences packed.");
  field(plan, "positions", &StepPlan::positions, "int64 [T] position of each token in its sequence.");
  field(plan, "slot_mapping", &StepPlan::slot_mapping, "int64 [T] cache slot (block * block_size + offset).");
  plan.def_prop_ro(
      "block_tables",
      [](StepPlan& p) {
        if (p.block_tables.empty()) p.block_tables.reserve(1);
        return nb::ndarray<nb::pytorch, int32_t, nb::ndim<2>>(
            p.block_tables.data(), {static_cast<size_t>(p.num_seqs), static_cast<size_t>(p.max_blocks)}, nb::handle());
      },
      nb::rv_policy::reference_internal, "int32 [S, max_blocks] block ids per scheduled sequence (padded with 0).");
  field(plan, "context_lens", &StepPlan::context_lens, "int32 [S] cached tokens incl. this step's.");
  field(plan, "query_start_loc", &StepPlan::query_start_loc, "int32 [S+1] prefix sums of query lengths.");
  field(plan, "copy_src", &StepPlan::copy_src, "int64 [C] blocks to copy from (before the forward).");
  field(plan, "copy_dst", &StepPlan::copy_dst, "int64 [C] blocks to copy to.");
  field(plan, "logits_indices", &StepPlan::logits_indices, "int64 [R] token row whose logits give sample r.");
  field(plan, "sample_seq_ids", &StepPlan::sample_seq_ids, "int64 [R] sequence id of sample r (pass to update).");
  field(plan, "sample_ids", &StepPlan::sample_ids, "int64 [R] index of the sample in its group.");
  field(plan, "sample_positions", &StepPlan::sample_positions, "int64 [R] position of the token being sampled.");
  field(plan, "sample_seeds", &StepPlan::sample_seeds, "int64 [R] group seed.");
  field(plan, "sample_group_ids", &StepPlan::sample_group_ids, "int64 [R] group id.");
  plan.def_ro("num_prefill_tokens", &StepPlan::num_prefill_tokens,
              "Prompt tokens computed this step for sequences with nothing generated yet.");
  plan.def_prop_ro("num_seqs", [](const StepPlan& p) { return p.num_seqs; }, "Sequences in the step (S).");

  nb::class_<Finished>(m, "Finished", "A finished sample: generated tokens, their log-probs and why it stopped.")
      .def_ro("group_id", &Finished::group_id)
      .def_ro("sample_id", &Finished::sample_id)
      .def_ro("token_ids", &Finished::token_ids)
      .def_ro("logprobs", &Finished::logprobs)
      .def_ro("raw_logprobs", &Finished::raw_logprobs)
      .def_ro("finish_reason", &Finished::finish_reason)
      .def("__repr__", [](const Finished& f) {
        return "Finished(group_id=" + std::to_string(f.group_id) + ", sample_id=" + std::to_string(f.sample_id) +
               ", tokens=" + std::to_string(f.token_ids.size()) + ", finish_reason='" + f.finish_reason + "')";
      });

  nb::class_<Scheduler>(m, "Scheduler",
                        "Continuous-batching scheduler: groups prefill once then fork (copy-on-write), preemption by "
                        "recompute.")
      .def(nb::init<int64_t, int64_t, int64_t, int64_t>(), "num_blocks"_a, "block_size"_a, "max_num_seqs"_a,
           "max_num_batched_tokens"_a)
      .def("add_group", &Scheduler::add_group, "group_id"_a, "prompt"_a, "n"_a, "max_new_tokens"_a,
           "stop_token_ids"_a = std::vector<int64_t>{}, "stop_sequences"_a = std::vector<std::vector<int64_t>>{},
           "seed"_a = 0, "Queue n samples of one prompt.")
      // schedule() keeps the GIL (tens of microseconds): it also serialises callers sharing a scheduler.
      .def("schedule", &Scheduler::schedule, "Plan the next forward step.")
      .def("update", &Scheduler::update, "sample_seq_ids"_a, "tokens"_a, "logprobs"_a, "raw_logprobs"_a,
           "Append one sampled token per plan row; returns the samples that finished.")
      // The same with the plan's own sample_seq_ids tensor passed back as it is (a list is faster).
      .def(
          "update",
          [](Scheduler& s, nb::ndarray<const int64_t, nb::ndim<1>, nb::device::cpu> ids,
             const std::vector<int64_t>& tokens, const std::vector<float>& logprobs,
             const std::vector<float>& raw_logprobs) {
            std::vector<int64_t> seq_ids(ids.shape(0));
            for (size_t i = 0; i < seq_ids.size(); ++i) seq_ids[i] = ids(i);
            return s.update(seq_ids, tokens, logprobs, raw_logprobs);
          },
          "sample_seq_ids"_a, "tokens"_a, "logprobs"_a, "raw_logprobs"_a)
      .def("check_invariants", &Scheduler::check_invariants, "Raise RuntimeError if block bookkeeping is inconsistent.")
      .def("has_unfinished", &Scheduler::has_unfinished, "True while any group has samples left.")
      .def_prop_ro("num_waiting", &Scheduler::num_waiting, "Sequences waiting for admission (incl. preempted).")
      .def_prop_ro("num_running", &Scheduler::num_running, "Sequences holding KV blocks.")
      .def_prop_ro("num_preemptions", &Scheduler::num_preemptions, "Preemptions so far.")
      // A copy, not a reference: Python code calling decref/allocate on the live allocator would
      // leave the scheduler handing out blocks that other sequences still hold.
      .def_prop_ro("allocator", &Scheduler::allocator, nb::rv_policy::copy,
                   "A snapshot of the BlockAllocator (a copy: changing it leaves the scheduler as it was).");
}

}  // namespace alignkit
