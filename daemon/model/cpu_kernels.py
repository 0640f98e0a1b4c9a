"""This project's C++ kernels for the CPU decode path, built once per machine kind and loaded when a model
is loaded for the CPU (daemon.weights.loader); layers take them only once `LOADED`.

Five sources, one build: w4a8.cpp (int4 group 32 and Q8_0 matmuls on integer activations, see
daemon/model/w4a8.py), rms_norm.cpp (a float32 RMSNorm in one call, see daemon/model/norms.py),
f32_mm.cpp (float32 matmuls of a few rows at the memory's speed, see daemon/model/linear.py),
decode_attention.cpp (a decode or verify step's rotation, cache write and attention in one call, see
daemon/model/attention.py) and decode_layer.cpp (the dense MLP, and an attention layer's whole decode
step, float32 or int4, in one call of the others, see daemon/model/text_model.py).
They compile with torch's C++ extension builder (`-march=native`; the sources' paths, torch's version and
the CPU's flags name the build, in torch's extensions dir, shared by every process of one checkout
whatever its MTPCHAT_HOME, one process building at a time), which needs a C++ compiler and ninja: about
half a minute on two cores, which scripts/setup.sh pays (`python -m daemon.model.cpu_kernels`). Where they
cannot be built, the model runs on torch's own ops and `unavailable()` says why.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import platform
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(name) for name in ("w4a8.cpp", "rms_norm.cpp", "f32_mm.cpp",
                                                                    "decode_attention.cpp", "decode_layer.cpp"))
TILE = 16  # w4a8's output rows per tile (its ops' outputs are whole tiles)
LOADED = False  # whether the kernels are loaded in this process (`unavailable()` loads them)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def build_name(arch: str = "native", sources: tuple[Path, ...] = SOURCES) -> str:
    """The build's name: one per torch version, CPU kind, target and set of sources, by path (torch's builder
    rebuilds on its own when the sources or the flags change, but `-march=native` reads the same on every
    CPU; and two checkouts sharing one build would rebuild it in turn, each time the other had built it)."""
    parts = (torch.__version__, platform.machine(), _cpu_flags(), arch, *(str(source) for source in sources))
    return f"mtpchat_cpu_{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:16]}"


def _block_mm_like(x, codes, d, m, tiles, simd):
    return x.new_empty((x.shape[0], tiles * TILE), dtype=torch.float32)


@contextlib.contextmanager
def _only_builder(directory: Path):
    """Be the only process building or loading in `directory` (a lock the OS releases when its holder dies).
    torch's builder marks a build with a `lock` file and waits, without end, for that file to go: a process
    killed while building (a daemon stopped during its first model load) left it behind, and every later
    load of the kernels hung. Under this lock no other builder runs, so such a file is stale: removed."""
    with open(directory / "mtpchat-build.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        stale = directory / "lock"
        if stale.exists():
            log.warning("removing %s, left by a build that did not finish", stale)
            stale.unlink()
        yield


def load_kernels(arch: str = "native", sources: tuple[Path, ...] = SOURCES) -> None:
    """Build (once) and load the kernels for `-march=arch`: all of them, or only w4a8.cpp, which stands
    alone (tests build it for "haswell" in a process of their own to check the AVX2 paths on machines that
    would take AVX-512: one source compiles in a third of the time all five take)."""
    from torch.utils import cpp_extension

    name = build_name(arch, sources)
    directory = Path(cpp_extension._get_build_directory(name, verbose=False))  # torch's, made if need be
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), path))  # the venv's ninja
    try:
        with _only_builder(directory):
            cpp_extension.load(name, [str(source) for source in sources], is_python_module=False,
                               extra_cflags=["-O3", f"-march={arch}", "-fopenmp", "-ffp-contract=off"],
                               extra_ldflags=["-fopenmp"], build_directory=str(directory))
    finally:
        os.environ["PATH"] = path
    # shapes for torch.compile, which traces the layers without running them
    for op in ("q4_mm", "q8_mm"):
        torch.library.register_fake(f"mtpchat_w4a8::{op}", _block_mm_like)
    if sources != SOURCES:
        return
    torch.library.register_fake("mtpchat_cpu::f32_mm", lambda x, w: x.new_empty((*x.shape[:-1], w.shape[0])))
    torch.library.register_fake("mtpchat_cpu::mlp_rows", lambda x, gate_up, down: x.new_empty(
        (*x.shape[:-1], down.shape[0])))
    torch.library.register_fake("mtpchat_cpu::rms_norm", lambda x, weight, offset, eps: torch.empty_like(
        x, memory_format=torch.contiguous_format))
    torch.library.register_fake("mtpchat_cpu::decode_layer", lambda x, *_: torch.empty_like(x))
    torch.library.register_fake("mtpchat_cpu::attend_rows", lambda query, *_: query.new_empty(
        (*query.shape[:-2], query.shape[-2] * query.shape[-1])))


@functools.cache
def unavailable() -> str | None:
    """None when the kernels are loaded (built first if need be), else why not."""
    global LOADED
    try:
        load_kernels()
    except Exception as error:  # no compiler, no ninja, a compile error: torch's ops serve instead
        log.warning("CPU kernels unavailable, the model stays on torch's ops: %s", error)
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[-1] if lines else 'no message'}"
    LOADED = True
    return None


def simd_path() -> str:
    """Which of the w4a8 kernel's paths this build runs: "avx512-vnni", "avx2" or "scalar"."""
    return torch.ops.mtpchat_w4a8.simd_path()


if __name__ == "__main__":  # scripts/setup.sh: build them now rather than on the first model load
    reason = unavailable()
    print(f"CPU kernels: {reason or simd_path()}")
