"""Building a `QwenModel` from a checkpoint directory, tensor by tensor, straight onto the device.

The model is created on the meta device, given uninitialised storage on the target device, and each
parameter is filled from the checkpoint, converted to the chosen dtype on the way (fp32 on CPU, bf16
on CUDA unless told otherwise). Trunk tensors live under `model.language_model.` in the hub's VLM
checkpoints and under `model.` in text-only ones; `lm_head.*` and `mtp.*` sit at the top. Routed
experts are read fused (`experts.gate_up_proj`, the hub layout) or per expert
(`experts.{i}.{gate,up,down}_proj.weight`, Qwen3.5's MTP layer and transformers' save_pretrained).
Layers the model stacks (q/k/v as qkv_proj, gate/up as gate_up_proj: `stacks` in daemon.model) are read
part by part and stacked by rows. With a `Quantization`, the quantized layers are swapped in while the
model is still on the meta device (daemon.model.quantized), so their storage is allocated quantized, and
each weight is quantized as it is read. Checkpoints shipped quantized (Qwen FP8, compressed-tensors
pack-quantized: daemon.weights.prequantized) are read dequantized, one tensor at a time, except where
their codes are already what our kernel multiplies by (4-bit at our int4 group, 8-bit per channel, FP8
blocks with quantize = "fp8"): those are taken as shipped, like GGUF's Q4_1 codes; a quantized model
whose lm_head (or tied embedding) ships as GGUF Q8_0 gets it as Q8Linear, the Q8_0 blocks exactly,
instead of re-rounding them to per-channel int8.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from daemon.model import cpu_kernels
from daemon.model.config import TextConfig
from daemon.model.fp8 import FP8_BLOCK, Fp8Linear, check_fp8_matmul
from daemon.model.linear import Linear, stacked_layers
from daemon.model.quantized import (
    Int4Linear,
    Int8Linear,
    Q8Linear,
    QuantizedExperts,
    q4_1_to_int4,
    quantize_modules,
    quantized_kernels,
    quantized_weights,
)
from daemon.model.text_model import QwenModel
from daemon.model.w4a8 import q8_0_layer
from daemon.weights.checkpoint import CheckpointError, CheckpointFiles, resolve_checkpoint
from daemon.weights.gguf_convert import Q4_1_GROUP, q4_1_names, q8_0_names, read_q4_1, read_q8_0
from daemon.weights.prequantized import Fp8Codes, PackedCodes, QuantizedCheckpointFiles, open_checkpoint
from mtpchat.config import DTYPE_NAMES, Quantization

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
            per_expert.append(torch.cat([files.read(f"{base}.{expert}.{p}.weight", half)
                                         for p in ("gate_proj", "up_proj")]))
        else:
            per_expert.append(files.read(f"{base}.{expert}.down_proj.weight", tuple(shape[1:])))
    return torch.stack(per_expert)


def _load_tensor(fill: Callable[[torch.Tensor], object], files: CheckpointFiles, name: str, shape: torch.Size) -> None:
    if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
        fill(_read_experts(files, name, shape))
    else:
        fill(files.read(name, tuple(shape)))


Parts = tuple[tuple[str, int], ...]  # the checkpoint tensors (name, rows) one layer's weight stacks


def _read_stacked(files: CheckpointFiles, parts: Parts, columns: int) -> torch.Tensor:
    """The parts stacked by rows (one part: the tensor as read, no copy)."""
    tensors = [files.read(name, (rows, columns)) for name, rows in parts]
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _load_stacked(fill: Callable[[torch.Tensor], object], files: CheckpointFiles, parts: Parts, columns: int) -> None:
    fill(_read_stacked(files, parts, columns))


def _load_q4_1(layer: Int4Linear, files: CheckpointFiles, parts: Parts) -> None:
    blocks = [read_q4_1(files, name, (rows, layer.in_features)) for name, rows in parts]
    layer.load_codes(*q4_1_to_int4(*(torch.cat(pieces) for pieces in zip(*blocks))))


def _load_q8_0(layer: Q8Linear, files: CheckpointFiles, name: str) -> None:
    layer.load_q8_0(*read_q8_0(files, name, (layer.out_features, layer.in_features)))


def _shipped(files: CheckpointFiles, name: str, shape: tuple[int, int] | None = None) -> PackedCodes | Fp8Codes | None:
    """The weight's codes as shipped (packed ints or FP8 blocks), or None where it ships as floats."""
    if not isinstance(files, QuantizedCheckpointFiles):
        return None
    return files.packed(name, shape) or files.fp8(name, shape)


def _load_shipped(layer: Int8Linear | Int4Linear | Fp8Linear, shipped: PackedCodes | Fp8Codes | None) -> bool:
    """Give `layer` the shipped codes where its kernel multiplies by exactly w = codes·scale: 4-bit
    symmetric at the layer's group is torch's int4 form with codes q + 8 and zero 0 (w = (q+8-8)·s + 0),
    8-bit per channel is Int8Linear's own, FP8 blocks are Fp8Linear's. Int scales are rounded to the
    kernels' bfloat16 (exact for the bfloat16 scales these checkpoints store). False: the caller
    dequantizes and quantizes again."""
    if isinstance(shipped, Fp8Codes):
        if not isinstance(layer, Fp8Linear):
            return False
        layer.load_codes(shipped.codes, shipped.scale_inv)
        return True
    if shipped is None:
        return False
    if isinstance(layer, Int4Linear) and shipped.bits == 4 and shipped.group == layer.group:
        scales = shipped.scales.float()
        layer.load_codes((shipped.codes + 8).to(torch.uint8), scales, torch.zeros_like(scales))
        return True
    if isinstance(layer, Int8Linear) and shipped.bits == 8 and shipped.group == layer.in_features:
        layer.load_codes(shipped.codes, shipped.scales[:, 0])
        return True
    return False


def _load_linear(layer: Int8Linear | Int4Linear | Fp8Linear, files: CheckpointFiles, parts: Parts) -> None:
    if not _load_shipped(layer, _joined([_shipped(files, name, (rows, layer.in_features)) for name, rows in parts])):
        layer.load(_read_stacked(files, parts, layer.in_features))


def _joined(parts: list[PackedCodes | Fp8Codes | None]) -> PackedCodes | Fp8Codes | None:
    """Shipped codes stacked as one weight (gate and up, or q, k and v), when all are shipped alike (FP8:
    and every part but the last fills whole 128-row scale blocks)."""
    if None in parts:
        return None
    if all(isinstance(p, Fp8Codes) for p in parts):
        if any(p.codes.shape[0] % FP8_BLOCK for p in parts[:-1]):
            return None
        return Fp8Codes(torch.cat([p.codes for p in parts]), torch.cat([p.scale_inv for p in parts]))
    if not all(isinstance(p, PackedCodes) for p in parts) or len({(p.bits, p.group) for p in parts}) != 1:
        return None
    return PackedCodes(torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts]), parts[0].bits)


def _load_experts(experts: QuantizedExperts, kind: str, files: CheckpointFiles, name: str, shape: torch.Size) -> None:
    """The fused tensor when the checkpoint has it, else expert by expert (shipped codes where they fit)."""
    if name in files:
        experts.load(kind, files.read(name, tuple(shape)))
        return
    base = name.rsplit(".", 1)[0]
    parts = ("gate_proj", "up_proj") if kind == "gate_up_proj" else ("down_proj",)
    stacked = getattr(experts, kind)
    for expert in range(stacked.experts):
        layer = stacked.expert(expert)
        names = [f"{base}.{expert}.{part}.weight" for part in parts]
        if not _load_shipped(layer, _joined([_shipped(files, n) for n in names])):
            part_shape = (layer.out_features // len(parts), layer.in_features)
            layer.load(torch.cat([files.read(n, part_shape) for n in names]))


def _load_steps(model: QwenModel, files: CheckpointFiles, prefix: str, tie: bool, group: int):
    """(weights, load) for every tensor the model takes from the checkpoint: its parameters, copied,
    and its quantized layers, quantized as they are filled (or, for int4 at group 32 where the checkpoint
    carries GGUF Q4_1 codes, given those codes as shipped)."""
    def stored(name: str) -> str:
        if tie and name == "lm_head.weight":
            return prefix + "embed_tokens.weight"
        return name if name.startswith(("mtp.", "lm_head.")) else prefix + name

    stacked = stacked_layers(model)

    def parts(layer: str, rows: int) -> Parts:
        return tuple((stored(f"{part}.weight"), n) for part, n in stacked.get(layer, ((layer, rows),)))

    for name, param in model.named_parameters():
        layer = name.removesuffix(".weight")
        if layer in stacked:
            yield param.numel(), functools.partial(_load_stacked, param.copy_, files, parts(layer, param.shape[0]),
                                                   param.shape[1])
        elif not (tie and name == "lm_head.weight"):  # a tied float lm_head is the embedding, set after
            yield param.numel(), functools.partial(_load_tensor, param.copy_, files, stored(name), param.shape)
    for name, module, shape in quantized_weights(model):
        if isinstance(module, Q8Linear):
            yield shape.numel(), functools.partial(_load_q8_0, module, files, stored(f"{name}.weight"))
            continue
        if isinstance(module, QuantizedExperts):
            kind = name.rsplit(".", 1)[1]
            yield shape.numel(), functools.partial(_load_experts, module, kind, files, stored(name), shape)
            continue
        sources = parts(name, module.out_features)
        shipped_q4_1 = all(q4_1_names(part)[0] in files for part, _ in sources)
        if isinstance(module, Int4Linear) and group == Q4_1_GROUP and shipped_q4_1:
            yield shape.numel(), functools.partial(_load_q4_1, module, files, sources)
        else:
            yield shape.numel(), functools.partial(_load_linear, module, files, sources)


def load_model(checkpoint: str | Path, *, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None, placement: PartDevices | None = None,
               progress: Callable[[float], None] | None = None,
               quantization: Quantization = Quantization()) -> QwenModel:
    """Onto one `device`, or split as `placement` says, with `quantization`'s layers quantized as they
    are read (quantized in row blocks: beyond the model, the tensor in hand and a block's float32 copies;
    README "Memory while loading"). progress, if given, is called with the fraction of weights loaded
    so far (0..1)."""
    directory = resolve_checkpoint(checkpoint)
    config = TextConfig.from_checkpoint(directory)
    files = open_checkpoint(directory)
    device = torch.device(placement.embed_device if placement else device or default_device())
    dtype = dtype or default_dtype(device)
    prefix = _trunk_prefix(files)
    tie = config.tie_word_embeddings and "lm_head.weight" not in files
    placed = placement.layer_devices + (placement.head_device,) if placement else ()
    devices = {str(d) for d in placed} | {str(device)}
    quantized = (quantization.method, quantization.mtp_method) != ("none", "none")
    kernels = quantized_kernels(devices) if quantized else "cpu"
    if kernels == "cuda" and "fp8" in (quantization.method, quantization.mtp_method):
        for name in sorted(devices):  # refused here, with the reason, where the device lacks the kernel
            check_fp8_matmul(name)

    with torch.device("meta"):
        model = QwenModel(config, with_mtp="mtp.fc.weight" in files).to(dtype)
        quantize_modules(model, quantization, kernels)
        head = prefix + "embed_tokens.weight" if tie else "lm_head.weight"
        if isinstance(model.lm_head, Int8Linear) and q8_0_names(head)[0] in files:  # GGUF Q8_0, exactly
            model.lm_head = q8_0_layer(config.hidden_size, config.vocab_size, kernels)
    if "cpu" in devices:
        cpu_kernels.unavailable()  # loads them (daemon/model/cpu_kernels.py): the CPU layers take them
    if placement is None:
        model.to_empty(device=device)
    else:
        model.place(placement.embed_device, placement.layer_devices, placement.head_device, allocate=True)
    with torch.no_grad():
        steps = list(_load_steps(model, files, prefix, tie, quantization.group))
        total, done = sum(weights for weights, _ in steps), 0
        for weights, load in steps:
            load()
            done += weights
            if progress is not None:
                progress(done / total)
    if tie and isinstance(model.lm_head, Linear):  # shared when on one device; a split model keeps a copy
        embed, head_device = model.embed_tokens.weight, model.output_device
        model.lm_head.weight = embed if embed.device == head_device else torch.nn.Parameter(
            embed.to(head_device), requires_grad=False)
    return model.eval().requires_grad_(False)
