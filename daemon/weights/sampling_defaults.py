"""A checkpoint's own sampling defaults: what its makers recommend, with thinking on and off.

Read as vLLM reads them: the sampling keys of generation_config.json (SAMPLING_FIELDS), whatever
`do_sample` says. Qwen3.5 and Qwen3.6 (and Qwen3.8, same model types) ship their thinking-mode values
there (Qwen3.6: temperature 0.6, top_p 0.95, top_k 20) and recommend other ones on their model cards for
instruct (non-thinking) mode, which no file carries: QWEN_INSTRUCT holds those, applied when a request
turns thinking off. A value the protocol would refuse is left out, and the daemon's log says so. The
daemon puts config.toml's settings and the request's over these (daemon/serve/scheduler.py).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mtpchat.protocol import SAMPLING_FIELDS, ProtocolError, sampling_fields

# The Qwen3.5/3.6 cards' "Instruct (or non-thinking) mode for general tasks".
QWEN_INSTRUCT = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0, "presence_penalty": 1.5,
                 "repetition_penalty": 1.0}
NON_THINKING = {"qwen3_5": QWEN_INSTRUCT, "qwen3_5_moe": QWEN_INSTRUCT}  # by config.json's model_type


@dataclass(frozen=True)
class ModelSampling:
    thinking: dict = field(default_factory=dict)
    no_thinking: dict = field(default_factory=dict)

    def defaults(self, thinking: bool) -> dict:
        return self.thinking if thinking else self.no_thinking


def checkpoint_sampling(directory: Path) -> ModelSampling:
    """The sampling defaults of the checkpoint in `directory` (empty without generation_config.json)."""
    path = Path(directory) / "generation_config.json"
    given = json.loads(path.read_text()) if path.exists() else {}
    recommended = {}
    for name in SAMPLING_FIELDS:
        if name in given:
            try:
                recommended.update(sampling_fields({name: given[name]}))
            except ProtocolError as exc:
                print(f"mtpchatd: {path}: {exc.message}; ignored", file=sys.stderr)
    model_type = json.loads((Path(directory) / "config.json").read_text()).get("model_type")
    return ModelSampling(recommended, {**recommended, **NON_THINKING.get(model_type, {})})
