"""Where mtpchat keeps things, in one place (platformdirs), all under MTPCHAT_HOME when it is set
(tests and several side-by-side installs use that)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "mtpchat"


def _root(kind: str) -> Path:
    home = os.environ.get("MTPCHAT_HOME")
    if home:
        return Path(home) / kind
    return Path(getattr(platformdirs, f"user_{kind}_dir")(APP))


def cache_dir() -> Path:
    return _root("cache")


def config_dir() -> Path:
    return _root("config")


def data_dir() -> Path:
    return _root("data")


def log_dir() -> Path:
    return _root("log")


def runtime_dir() -> Path:
    """Socket and pid file; created private (0700) on first use."""
    path = _root("runtime")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def default_endpoint() -> str:
    return f"ipc://{runtime_dir() / 'mtpchatd.sock'}"


def pid_file() -> Path:
    return runtime_dir() / "mtpchatd.pid"


def daemon_log() -> Path:
    return log_dir() / "mtpchatd.log"
