"""The inputs of a placement plan, measured: what each device may still take, what a model needs.

Budgets come from the devices present (a GPU's free memory less headroom for activations, the host's
available memory for the CPU), capped by the user's `max_memory` per device, which counts what this
daemon's resident models already hold there. A model's footprint is computed on the meta device from
its config: exact weight bytes per part (quantized layers at their quantized size) plus the cache of
one stream at the model's context length.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from daemon.model.cache import ModelCache
from daemon.model.config import TextConfig
from daemon.model.quantized import quantize_modules
from daemon.model.text_model import QwenModel
from daemon.serve.placement import GPU_HEADROOM, DeviceBudget, Footprint
from daemon.weights.checkpoint import CheckpointFiles, resolve_checkpoint
from mtpchat.config import Quantization
from mtpchat.protocol import MAX_DRAFT

MAX_DRAFT_SLOTS = MAX_DRAFT + 1  # DeltaNet step slots of a (k+1)-token verify at the largest draft k


def _host_memory() -> tuple[int, int]:
    """(available, total) bytes of host memory."""
    fields = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0]) * 1024
    return fields["MemAvailable"], fields["MemTotal"]


def describe_devices() -> list[dict]:
    """For status: every device with its memory in use, free and total (bytes)."""
    free, total = _host_memory()
    rows = [{"name": "cpu", "memory_free": free, "memory_total": total, "memory_used": total - free}]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        free, total = torch.cuda.mem_get_info(index)
        rows.append({"name": f"cuda:{index}", "memory_free": free, "memory_total": total,
                     "memory_used": total - free})
    return rows


def device_budgets(max_memory: dict[str, int], in_use: dict[str, int],
                   reserved: Callable[[str], int] = lambda device: 0) -> list[DeviceBudget]:
    """Budgets for "cpu" and every visible GPU; `in_use`: bytes our resident models hold per device;
    `reserved`: what each device keeps back beyond that (the conversation state cache)."""
    probed = {row["name"]: row["memory_free"] if row["name"] == "cpu" else int(row["memory_free"] * GPU_HEADROOM)
              for row in describe_devices()}
    budgets = []
    for name, free in probed.items():
        free -= reserved(name)
        if name in max_memory:
            free = min(free, max_memory[name] - in_use.get(name, 0))
        budgets.append(DeviceBudget(name, max(free, 0)))
    return budgets


def _bytes(*modules: torch.nn.Module) -> int:
    """Parameters and buffers (a quantized layer's codes and scales are buffers)."""
    return sum(t.numel() * t.element_size() for module in modules
               for t in (*module.parameters(), *module.buffers()))


def model_footprint(config: TextConfig, dtype: torch.dtype, with_mtp: bool, context: int,
                    quantization: Quantization = Quantization()) -> Footprint:
    """Weights per part in `dtype` (quantized as `quantization` says), each layer with its cache for
    `context` tokens (one stream)."""
    with torch.device("meta"):
        model = QwenModel(config, with_mtp=with_mtp).to(dtype)
        quantize_modules(model, quantization)
        cache = ModelCache(config, context, max_steps=MAX_DRAFT_SLOTS, device="meta", dtype=dtype)
    layers = tuple(_bytes(layer) + layer_cache.nbytes() for layer, layer_cache in zip(model.layers, cache.layers))
    head = _bytes(model.norm, model.lm_head)
    if with_mtp:
        head += _bytes(model.mtp) + model.new_mtp_cache(context).nbytes()
    return Footprint(_bytes(model.embed_tokens), layers, head)


def checkpoint_footprint(checkpoint: str | Path, dtype: torch.dtype, context: int,
                         quantization: Quantization = Quantization()) -> tuple[Footprint, int]:
    """What the checkpoint needs at `dtype` and `quantization` with one stream of up to `context` tokens
    (capped at the model's own limit), and that limit."""
    directory = resolve_checkpoint(checkpoint)
    config = TextConfig.from_checkpoint(directory)
    context = min(context, config.max_position_embeddings)
    files = CheckpointFiles(directory)
    return model_footprint(config, dtype, "mtp.fc.weight" in files, context, quantization), context
