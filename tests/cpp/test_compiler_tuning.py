"""The linear kernels stay batch-invariant however the compiler is tuned to fuse multiply-adds.

GCC may keep a loop-carried a * b + c unfused (its FMA-chain avoidance, `--param avoid-fma-max-bits`,
which some versions and tunings turn on by themselves) and fuse it elsewhere, so a kernel that left
fusion to -ffp-contract rounded differently in different tile shapes: on one GCC (a lent GPU
machine's) a row's output changed with the rows batched beside it. The kernels now spell each FMA
out and are compiled with -ffp-contract=off, so the tuning can no longer reach them: this builds the
extension with it at its strongest and checks that (it fails if either safeguard is removed), and
that the attention kernel, which still leaves fusion to the compiler, stays batch-invariant too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .simd_flavour import expected_isa

REPO = Path(__file__).resolve().parents[2]
TUNING = "--param=avoid-fma-max-bits=512"  # avoid fusing FMA chains of any vector width

CHECK = r"""
import importlib.util, sys, torch, torch.nn.functional as F
spec = importlib.util.spec_from_file_location("alignkit._sampler", sys.argv[1])
ext = importlib.util.module_from_spec(spec); spec.loader.exec_module(ext)
assert ext.attention_isa() == sys.argv[2], ext.attention_isa()
g = torch.Generator().manual_seed(5)
def nk(x, w, b):
    out = torch.empty(x.shape[0], w.shape[0]); ext.linear(out, x, w, b); return out
def kn(x, w, b):
    out = torch.empty(x.shape[0], w.shape[1]); ext.linear_kn(out, x, w, b); return out
# Every input-row tail beside full tiles (tiles of 3 and 4 rows in linear, 6 in linear_kn: 1..5
# rows left), weight-row and column tails, k tails.
for m, n, k in [(1, 5, 9), (7, 66, 256), (8, 20, 33), (9, 40, 70), (11, 9, 130), (13, 130, 37), (6, 17, 40),
                (40, 93, 600), (31, 11, 2100)]:
    x, b = torch.randn(m, k, generator=g), torch.randn(n, generator=g)
    w = torch.randn(n, k, generator=g)
    out = nk(x, w, b)
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-4)
    assert torch.equal(torch.cat([nk(x[i:i + 1], w, b) for i in range(m)]), out), ("linear", m, n, k)
    wt = w.t().contiguous()
    out = kn(x, wt, b)
    torch.testing.assert_close(out, torch.addmm(b, x, wt), rtol=1e-5, atol=1e-4)
    assert torch.equal(torch.cat([kn(x[i:i + 1], wt, b) for i in range(m)]), out), ("linear_kn", m, n, k)
# Paged attention (left to -ffp-contract=fast, its paths depend on a sequence's own length):
# a decode token's output is bitwise the same alone as beside samples sharing its prompt blocks.
bs, hk, hq, d = 4, 2, 4, 32
kc, vc = torch.randn(64, bs, hk, d, generator=g), torch.randn(64, bs, hk, d, generator=g)
tables = torch.tensor([[0, 1, 2, 3 + i] for i in range(6)] + [[20 + i, 30 + i, 40 + i, 50 + i] for i in range(3)],
                      dtype=torch.int32)
ctx = torch.tensor([13, 14, 15, 16, 13, 14, 9, 16, 5], dtype=torch.int32)
q, qsl = torch.randn(9, hq, d, generator=g), torch.arange(10, dtype=torch.int32)
out = torch.empty_like(q); ext.paged_attention(out, q, kc, vc, tables, ctx, qsl, d ** -0.5)
for i in range(9):
    one = torch.empty(1, hq, d)
    ext.paged_attention(one, q[i:i + 1].clone(), kc, vc, tables[i:i + 1].clone(), ctx[i:i + 1].clone(),
                        torch.tensor([0, 1], dtype=torch.int32), d ** -0.5)
    assert torch.equal(one, out[i:i + 1]), ("paged_attention", i)
print("ok")
"""


def _is_gcc(compiler: str) -> bool:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    return "Free Software Foundation" in version and "clang" not in version.lower()


@pytest.fixture(scope="module")
def tuned_extension(tmp_path_factory) -> Path:
    """alignkit._sampler built from this checkout with GCC told to avoid fusing FMA chains."""
    # cmake beside this Python (a venv's `pip install cmake`) or on PATH
    cmake = shutil.which("cmake", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    try:
        import nanobind  # the test extra installs it (the build's own copy lives in pip's isolated env)
    except ImportError:
        nanobind = None
    if cmake is None or compiler is None or not _is_gcc(compiler) or nanobind is None:
        assert os.environ.get("CI") != "true", \
            "CI checks the kernels under GCC's FMA tuning: it needs cmake and GCC on PATH and nanobind (.[test])"
        pytest.skip("needs cmake, GCC (the tuning parameter is GCC's; other compilers build baseline kernels only) "
                    "and nanobind (pip install -e '.[test]')")

    build = tmp_path_factory.mktemp("fma_tuned_build")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = [cmake, "-S", str(REPO), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
                 "-DALIGNKIT_NO_CUDA=ON", f"-DCMAKE_CXX_FLAGS={TUNING}", f"-Dnanobind_DIR={nanobind.cmake_dir()}",
                 f"-DPython_EXECUTABLE={sys.executable}"]
    for step in (configure, [cmake, "--build", str(build), "-j", str(os.cpu_count() or 2)]):
        done = subprocess.run(step, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    built = list(build.glob("_sampler*.so"))
    assert len(built) == 1, built
    return built[0]


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_linear_kernels_are_batch_invariant_when_gcc_avoids_fma_chains(tuned_extension, isa):
    if expected_isa(isa) != isa:
        pytest.skip(f"this CPU has no {isa}")
    done = subprocess.run([sys.executable, "-c", CHECK, str(tuned_extension), isa], capture_output=True, text=True,
                          env={**os.environ, "ALIGNKIT_ISA": isa}, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
