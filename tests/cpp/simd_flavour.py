"""Which SIMD flavour of the CPU kernels a process should run here, for the tests that check it."""

from __future__ import annotations

import os


def expected_isa(cap: str) -> str:
    """The kernel flavour ALIGNKIT_ISA=cap gives on this CPU (the cap, or less if the CPU lacks it)."""
    flags = set(open("/proc/cpuinfo").read().split()) if os.path.exists("/proc/cpuinfo") else set()
    have = "baseline"
    if {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"} <= flags:  # x86-64-v3
        have = "avx2"
        if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags:  # x86-64-v4
            have = "avx512"
    order = ["baseline", "avx2", "avx512"]
    return order[min(order.index(cap), order.index(have))]
