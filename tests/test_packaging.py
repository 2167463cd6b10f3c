"""The install layout: everything under `alignkit`, no generic top-level names, CUDA compiled where nvcc is."""

import os
import shutil
import subprocess
import sys


def _run_outside_repo(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)


def test_engine_and_algorithms_install_under_alignkit(tmp_path):
    proc = _run_outside_repo("import alignkit.engine, alignkit.algorithms, alignkit._sampler; print('ok')", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_no_generic_top_level_names_installed_into_site_packages():
    # The files the install wrote (its RECORD) all live under alignkit/, its dist-info, or the
    # editable-install shim; nothing named engine/, algorithms/, tools/ lands in site-packages.
    from importlib.metadata import distribution

    files = [str(f) for f in distribution("alignkit").files]
    assert any(f.startswith("alignkit/_sampler") for f in files), files
    allowed = ("alignkit/", "alignkit-", "_editable_skbc_alignkit", "__pycache__/_editable_skbc_alignkit")
    stray = [f for f in files if not f.startswith(allowed) and not f.startswith("../")]
    assert stray == [], f"files installed outside alignkit/: {stray}"


def test_cuda_kernels_compiled_when_a_cuda_compiler_is_present():
    # The build compiles cpp/cuda/*.cu whenever CMake finds nvcc; this is CI's compile check, so
    # in CI (which has nvcc) a missing compiler fails here rather than silently skipping the .cu files.
    import alignkit._sampler as ext

    nvcc = shutil.which("nvcc")
    if os.environ.get("CI") == "true":
        assert nvcc is not None, "CI compile-checks the CUDA sources: nvcc must be on PATH"
    if nvcc is None:
        assert ext.has_cuda is False
    else:
        assert ext.has_cuda is True
