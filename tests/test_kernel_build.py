"""The CPU kernels' build (daemon/model/cpu_kernels.py) survives what happens to it on a user's machine: a
build killed half-way, and several checkouts of mtpchat on one machine."""

import subprocess
import sys
from pathlib import Path

from torch.utils import cpp_extension

from daemon.model import cpu_kernels

ROOT = Path(__file__).resolve().parents[1]
LOAD = "from daemon.model import cpu_kernels; print(cpu_kernels.unavailable())"


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next_load():
    assert cpu_kernels.unavailable() is None  # built (if need be) and loaded
    directory = Path(cpp_extension._get_build_directory(cpu_kernels.build_name(), verbose=False))
    (directory / "lock").touch()  # what torch's builder leaves when its process is killed mid-build
    result = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.stdout.strip() == "None", result.stderr[-2000:]
    assert not (directory / "lock").exists()


def test_each_checkout_builds_its_own_kernels():
    """Sharing one build, two checkouts would rebuild it in turn (torch rebuilds when the sources' paths
    change), racing each other's loads."""
    here = cpu_kernels.SOURCES
    elsewhere = tuple(Path("/elsewhere/mtpchat") / source.name for source in here)
    assert cpu_kernels.build_name("native", here) != cpu_kernels.build_name("native", elsewhere)
