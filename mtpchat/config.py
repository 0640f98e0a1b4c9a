"""The user's configuration: config.toml in the config dir (models, which load at start, default).

With no file, two models are configured: `demo` (the default), SmolLM2-135M-Instruct with the MTP head
this project trained for it, fetched from the package index and converted on first use, so everything
works on a fresh machine without a GPU; and `tiny`, a tiny random Qwen3.6-layout checkpoint built
offline (loaded on request only). Pointing mtpchat at real models is a few lines, e.g.

    default = "dense"
    [models.dense]
    path = "Qwen/Qwen3.6-27B"          # a repo id in the local Hugging Face cache, or a directory
    draft = 3                          # MTP draft tokens per step, or "auto"; 0 decodes plainly
    [models.moe]
    path = "Qwen/Qwen3.6-35B-A3B"
    dtype = "bfloat16"
    device = "cuda:1"

Every model in the file loads at daemon start unless it says `load_at_start = false`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

from mtpchat.paths import config_dir

BUILTIN = "builtin:"  # paths the daemon makes itself (daemon.default_model)
DEMO = "demo"
DEMO_PATH = "builtin:smollm2"  # resolved by the daemon to the converted demo checkpoint in the cache
TINY = "tiny"
TINY_PATH = "builtin:tiny"  # resolved by the daemon to the tiny checkpoint it builds in the cache
DRAFT_CHOICES = (0, 1, 2, 3, 4, "auto")
DTYPE_NAMES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelSettings:
    name: str
    path: str
    dtype: str | None = None
    draft: int | str = 2
    device: str | None = None
    load_at_start: bool = True

    def __post_init__(self) -> None:
        if self.draft not in DRAFT_CHOICES:
            raise ValueError(f"model {self.name!r}: draft must be one of {DRAFT_CHOICES}, got {self.draft!r}")
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise ValueError(f"model {self.name!r}: dtype must be one of {DTYPE_NAMES}, got {self.dtype!r}")


@dataclass(frozen=True)
class Config:
    models: dict[str, ModelSettings] = field(default_factory=lambda: {
        DEMO: ModelSettings(DEMO, DEMO_PATH),
        TINY: ModelSettings(TINY, TINY_PATH, load_at_start=False),
    })
    default: str = DEMO

    def __post_init__(self) -> None:
        if self.default not in self.models:
            raise ValueError(f"default model {self.default!r} is not among the models {sorted(self.models)}")


def load_config() -> Config:
    path = config_dir() / "config.toml"
    if not path.exists():
        return Config()
    try:
        raw = tomllib.loads(path.read_text())
        models = {name: ModelSettings(name, **fields) for name, fields in raw.get("models", {}).items()}
        if not models:
            return Config()
        return Config(models, raw.get("default", next(iter(models))))
    except (tomllib.TOMLDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
