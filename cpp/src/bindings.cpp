// The extension module alignkit._sampler: kernels (bind_kernels.cpp) and the
// allocator/scheduler classes (bind_scheduler.cpp).
#include <nanobind/nanobind.h>

namespace nb = nanobind;

namespace alignkit {
void bind_kernels(nb::module_& m);
void bind_scheduler(nb::module_& m);
}

NB_MODULE(_sampler, m) {
  m.doc() = "alignkit rollout sampler: paged KV-cache kernels, sampling, block allocator and scheduler";
#if defined(ALIGNKIT_WITH_CUDA)
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
#if defined(ALIGNKIT_WITH_OPENMP)
  m.attr("uses_openmp") = true;  // CPU kernels run on the process's OpenMP team (torch's)
#else
  m.attr("uses_openmp") = false;  // CPU kernels run on the extension's own thread pool
#endif
  // Objects still referenced at interpreter exit (e.g. a StepPlan held by torch.compile's caches,
  // which are never torn down) are not leaks of ours; nanobind's exit report would only alarm users.
  nb::set_leak_warnings(false);
  alignkit::bind_kernels(m);
  alignkit::bind_scheduler(m);
}
