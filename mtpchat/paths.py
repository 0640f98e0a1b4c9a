"""Where mtpchat keeps things, in one place (platformdirs), overridable for tests via MTPCHAT_HOME."""

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
