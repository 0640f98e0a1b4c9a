"""The model used when none is named: a tiny Qwen3.6-layout checkpoint built once into the cache.

It needs no GPU and no download, so the README's run command works on any fresh machine. Its
weights are random: it produces real (if meaningless) text through the real engine path.
"""

from __future__ import annotations

from pathlib import Path

from mtpchat.paths import cache_dir

DEFAULT_NAME = "qwen3.6-dense-tiny"


def default_checkpoint() -> Path:
    target = cache_dir() / "checkpoints" / DEFAULT_NAME
    if not (target / "model.safetensors.index.json").exists():
        from daemon.tiny_checkpoint import VARIANTS, build_checkpoint

        kind, layout = VARIANTS[DEFAULT_NAME]
        build_checkpoint(target, kind, layout)
    return target
