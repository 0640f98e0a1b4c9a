"""Where mtpchat keeps things, in one place (platformdirs), all under MTPCHAT_HOME when it is set
(tests and several side-by-side installs use that).

Conversations, the daemon's log and its socket are the user's alone: their dirs are made 0700 and
`private_file` creates files 0600, whatever the umask (another local user must not read a chat)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import platformdirs

APP = "mtpchat"


def _root(kind: str) -> Path:
    home = os.environ.get("MTPCHAT_HOME")
    if home:
        return Path(home) / kind
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR (an ssh session without logind, a container, tmux started outside a
        # login) platformdirs falls back to /tmp/runtime-<uid> and warns on every command; that
        # directory is made the user's alone (0700) below all the same. Its other warnings stay.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR is not set",
                                category=getattr(platformdirs, "RuntimeDirWarning", UserWarning))
        return Path(getattr(platformdirs, f"user_{kind}_dir")(APP))


def cache_dir() -> Path:
    return _root("cache")


def config_dir() -> Path:
    return _root("config")


def _private_dir(kind: str) -> Path:
    path = _root(kind)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def private_file(path: Path) -> Path:
    """`path`, created empty if absent, readable and writable by the user alone (0600)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    path.chmod(0o600)
    return path


def data_dir() -> Path:
    """Conversations and exports; private (0700)."""
    return _private_dir("data")


def log_dir() -> Path:
    """The daemon's log; private (0700)."""
    return _private_dir("log")


def runtime_dir() -> Path:
    """Socket and pid file; private (0700)."""
    return _private_dir("runtime")


def default_endpoint() -> str:
    return f"ipc://{runtime_dir() / 'mtpchatd.sock'}"


def pid_file() -> Path:
    return runtime_dir() / "mtpchatd.pid"


def daemon_log() -> Path:
    return log_dir() / "mtpchatd.log"
