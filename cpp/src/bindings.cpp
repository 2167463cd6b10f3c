#include <nanobind/nanobind.h>
namespace nb = nanobind;
NB_MODULE(_sampler, m) { m.doc() = "alignkit rollout sampler (placeholder)"; m.attr("has_cuda") = false; }
