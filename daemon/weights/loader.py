"""Building a `QwenModel` from a checkpoint directory, tensor by tensor, straight onto the device.

The model is created on the meta device, given uninitialised storage on the target device, and each
parameter is filled from the checkpoint, converted to the chosen dtype on the way (fp32 on CPU, bf16
on CUDA unless told otherwise). Trunk tensors live under `model.language_model.` in the hub's VLM
checkpoints and under `model.` in text-only ones; `lm_head.*` and `mtp.*` sit at the top. Routed
experts are read fused (`experts.gate_up_proj`, the hub layout) or per expert
(`experts.{i}.{gate,up,down}_proj.weight`, Qwen3.5's MTP layer and transformers' save_pretrained).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from daemon.model.config import TextConfig
from daemon.model.text_model import QwenModel
from daemon.weights.checkpoint import CheckpointError, CheckpointFiles, resolve_checkpoint
from mtpchat.config import DTYPE_NAMES

TRUNK_PREFIXES = ("model.language_model.", "model.")


DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


class PartDevices(Protocol):
    """Where each part of a split model goes; `daemon.serve.placement.Placement` is one."""
    embed_device: str
    layer_devices: tuple[str, ...]
    head_device: str


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _trunk_prefix(files: CheckpointFiles) -> str:
    for prefix in TRUNK_PREFIXES:
        if prefix + "embed_tokens.weight" in files:
            return prefix
    raise CheckpointError(
        f"{files.directory} has no embedding tensor (looked for "
        + " or ".join(repr(p + "embed_tokens.weight") for p in TRUNK_PREFIXES)
        + f" in {files.source})"
    )


def _read_experts(files: CheckpointFiles, name: str, shape: torch.Size) -> torch.Tensor:
    """A fused expert tensor, read as stored or stacked from per-expert tensors."""
    if name in files:
        return files.read(name, tuple(shape))
    base, kind = name.rsplit(".", 1)  # ...experts, gate_up_proj | down_proj
    per_expert = []
    for expert in range(shape[0]):
        if kind == "gate_up_proj":
            half = (shape[1] // 2, shape[2])
            per_expert.append(torch.cat([files.read(f"{base}.{expert}.{p}.weight", half) for p in ("gate_proj", "up_proj")]))
        else:
            per_expert.append(files.read(f"{base}.{expert}.down_proj.weight", tuple(shape[1:])))
    return torch.stack(per_expert)


def load_model(checkpoint: str | Path, *, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None, placement: PartDevices | None = None,
               progress: Callable[[float], None] | None = None) -> QwenModel:
    """Onto one `device`, or split as `placement` says. progress, if given, is called with the
    fraction of parameters loaded so far (0..1)."""
    directory = resolve_checkpoint(checkpoint)
    config = TextConfig.from_checkpoint(directory)
    files = CheckpointFiles(directory)
    device = torch.device(placement.embed_device if placement else device or default_device())
    dtype = dtype or default_dtype(device)
    prefix = _trunk_prefix(files)
    tie = config.tie_word_embeddings and "lm_head.weight" not in files

    with torch.device("meta"):
        model = QwenModel(config, with_mtp="mtp.fc.weight" in files).to(dtype)
    if placement is None:
        model.to_empty(device=device)
    else:
        model.place(placement.embed_device, placement.layer_devices, placement.head_device, allocate=True)
    total = sum(p.numel() for p in model.parameters())
    done = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            done += param.numel()
            if progress is not None:
                progress(done / total)
            if tie and name == "lm_head.weight":
                continue
            stored = name if name.startswith(("mtp.", "lm_head.")) else prefix + name
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                tensor = _read_experts(files, stored, param.shape)
            else:
                tensor = files.read(stored, tuple(param.shape))
            param.copy_(tensor)
    if tie:  # shared when on one device; a split model keeps a copy beside its head
        embed = model.embed_tokens.weight
        model.lm_head.weight = embed if embed.device == model.lm_head.weight.device else torch.nn.Parameter(
            embed.to(model.lm_head.weight.device), requires_grad=False)
    return model.eval().requires_grad_(False)
