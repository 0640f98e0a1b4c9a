"""The wheel is the client a laptop installs: built from this checkout and installed into a fresh venv
that holds the client's dependencies and nothing else (no torch), it must run `mtpchat --help` and the
TUI with the stylesheet and the two themes it carries as package data.

Offline and quick: the dependencies are not downloaded again but linked into the venv from this
interpreter's site-packages, following the wheel's own Requires-Dist (extras and markers honoured),
and `pip check` then proves the venv satisfies every requirement of everything in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from importlib.metadata import Distribution, distribution
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
SMOKE = """
import asyncio, os, sys
import mtpchat
from mtpchat.tui.app import MtpChatApp

async def main():
    app = MtpChatApp(f"ipc://{os.environ['MTPCHAT_HOME']}/no-daemon.sock", autostart=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        assert {"mtpchat-dark", "mtpchat-light"} <= set(app.available_themes), app.available_themes
        assert app.theme == "mtpchat-dark"
        app.theme = "mtpchat-light"
        await pilot.pause()
        topbar = app.query_one("#topbar")
        assert topbar.styles.height.value == 1 and app.query_one("#sidebar").styles.max_width.value == 32  # app.tcss
    print("ok", app.theme, mtpchat.__file__)

asyncio.run(main())
"""


def client_distributions(wheel: Path) -> list[Distribution]:
    """The installed distributions the wheel's base requirements pull in, transitively."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    pending = [(Requirement(line.split(":", 1)[1]), "") for line in lines if line.startswith("Requires-Dist:")]
    found: dict[str, Distribution] = {}
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        dist = distribution(requirement.name)
        for wanted in requirement.extras | {""}:
            key = f"{dist.metadata['Name'].lower()}[{wanted}]"
            if key not in found:
                found[key] = dist
                pending += [(Requirement(r), wanted) for r in dist.requires or []]
    return list({d.metadata["Name"]: d for d in found.values()}.values())


def link_into(site: Path, dist: Distribution) -> None:
    """Make `dist` importable from `site` by linking its top-level files and folders."""
    for name in {file.parts[0] for file in dist.files if file.parts[0] != ".."}:
        target = site / name
        if not target.exists():
            target.symlink_to(dist.locate_file(name))


def test_the_wheel_runs_the_client_in_a_venv_without_torch(tmp_path):
    source = tmp_path / "src"  # a copy, so that building leaves no build/ or egg-info in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("mtpchat", "daemon", "themes"):
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", tmp_path / "dist", source], check=True)
    wheel = next((tmp_path / "dist").glob("mtpchat-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"mtpchat/tui/app.tcss", "mtpchat/themes/mtpchat-dark.toml",
            "mtpchat/themes/mtpchat-light.toml"} <= set(names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    dists = client_distributions(wheel)
    assert {d.metadata["Name"].lower() for d in dists} >= {"textual", "pyzmq", "msgpack", "platformdirs", "rich"}
    assert "torch" not in {d.metadata["Name"].lower() for d in dists}
    for dist in dists:
        link_into(site, dist)
    pip = [sys.executable, "-m", "pip", "--python", python]
    subprocess.run(pip + ["install", "--no-deps", "--no-index", "-q", wheel], check=True)
    subprocess.run(pip + ["check"], check=True)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    no_torch = subprocess.run([python, "-c", "import torch"], **run)
    assert "No module named 'torch'" in no_torch.stderr
    help_text = subprocess.run([env_dir / "bin" / "mtpchat", "--help"], **run)
    assert help_text.returncode == 0 and "Chat with MTP-decoded Qwen models" in help_text.stdout, help_text.stderr
    smoke = subprocess.run([python, "-c", SMOKE], **run)
    assert smoke.returncode == 0, smoke.stderr
    assert smoke.stdout.startswith("ok mtpchat-light ") and smoke.stdout.strip().endswith(
        str(site / "mtpchat" / "__init__.py"))
