"""What a measurement ran on: CPU model, cores, the CPU flags that decide kernel choice, the load.

Every benchmark and soak script and `mtpchatd loops` prints this beside its figures, because machines
of the same kind differ in CPU (AVX-512, AMX or not) and a figure without its machine does not
reproduce. Torch-free, so client-side scripts use it too.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# the flags torch's and ggml's CPU kernels dispatch on
FLAGS_OF_INTEREST = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    info = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), None)
    flags = set(next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), []))
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "flags": [f for f in FLAGS_OF_INTEREST if f in flags], "load_average": os.getloadavg()}
