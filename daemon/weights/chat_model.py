"""A checkpoint ready to chat: our model for the forward, transformers' tokenizer for the template.

The engine never reads files; the daemon's registry and the tools get both halves from here.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from daemon.model.text_model import QwenModel
from daemon.weights.checkpoint import resolve_checkpoint
from daemon.weights.loader import PartDevices, load_model
from mtpchat.config import Quantization


def load_chat_model(checkpoint: str | Path, device: str | None = None, dtype=None, placement: PartDevices | None = None,
                    progress=None, quantization: Quantization = Quantization()) -> tuple[QwenModel, object]:
    """The model (onto `device`, or split as `placement` says, quantized as `quantization` says) and its
    tokenizer, which carries the chat template."""
    directory = resolve_checkpoint(checkpoint)
    model = load_model(directory, device=device, dtype=dtype, placement=placement, progress=progress,
                       quantization=quantization)
    return model, AutoTokenizer.from_pretrained(directory)
