"""Reading checkpoints that ship quantized: Qwen's FP8 releases and compressed-tensors "pack-quantized".

Both are read tensor by tensor, like any checkpoint: `QuantizedCheckpointFiles.read("x.weight")` gives
the weight dequantized in float32, whichever way it is stored, so the loader fills a float layer, or
quantizes it to our int8 / int4, from one tensor at a time (the whole float model never exists). Where
the stored codes already are what one of our kernels multiplies by, `packed()` hands them over as
shipped instead (daemon.weights.loader: 4-bit group g onto Int4Linear at group g, 8-bit per channel
onto Int8Linear). What is quantized is read from the tensors present, not from the config's lists:
a weight with a `weight_scale_inv` beside it is FP8, one stored as `weight_packed` is packed ints,
anything else is read as stored.

Qwen FP8 (`Qwen/Qwen3.6-27B-FP8`, `Qwen/Qwen3.6-35B-A3B-FP8`; config `quantization_config`
`{"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128],
"modules_to_not_convert": [...]}`): `<m>.weight` float8_e4m3fn [N, K] and `<m>.weight_scale_inv` float32
[ceil(N/128), ceil(K/128)], w = fp8 · scale_inv of its 128x128 block (the last row and column blocks
partial). The 35B-A3B release stores its routed experts per expert (`mlp.experts.{e}.{gate,up,down}_proj
.weight`, each with its scale), where the bf16 release fuses them; its 30,970 scale tensors are exactly
40·256·3 experts + 30·3 DeltaNet (in_proj_qkv, in_proj_z, out_proj) + 10·4 attention (q, k, v, o) + 40·3
shared-expert projections. So bf16 stay: the embedding, lm_head, norms, conv1d, DeltaNet's in_proj_a
and in_proj_b, the router `mlp.gate`, `shared_expert_gate`, `mtp.*` and the vision tower. Sources:
vllm-project/vllm-metal#312 and ml-explore/mlx-lm#1224 (tensor counts, per-expert names, the
block-padded dequantization), transformers' finegrained_fp8 integration (the block layout). An
`activation_scale` (static schemes; Qwen's are dynamic) is never read.

compressed-tensors "pack-quantized" (W4A16 / W8A16 community releases; config `quantization_config`
`{"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {...: {"weights":
{"num_bits": 4 | 8, "type": "int", "symmetric": true, "strategy": "group" | "channel", "group_size":
128}}}, "ignore": [...]}`): `<m>.weight_packed` int32 [N, K·bits/32], `<m>.weight_scale` [N, K/group]
([N, 1] per channel), `<m>.weight_shape` [N, K]. Packing (compressed_tensors' pack_to_int32, read in
vllm-project/compressed-tensors `pack_quantized.py`): each signed code q is offset to q + 2^(bits-1)
and element j of each run of 32/bits along a row sits at bits [j·bits, (j+1)·bits) of its int32 word;
w = q · scale (symmetric: no zero point is stored). Read with safetensors, no new dependency. Bits and
group come from the tensors' shapes, so a checkpoint mixing 4- and 8-bit groups loads too. Asymmetric
schemes (a `weight_zero_point`) are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from daemon.weights.checkpoint import CheckpointError, CheckpointFiles

FP8 = "fp8"
PACKED = "compressed-tensors"
PACKED_FORMAT = "pack-quantized"
FP8_BLOCK = (128, 128)  # Qwen's weight_block_size
WORD_BITS = 32


@dataclass(frozen=True)
class PackedCodes:
    """A pack-quantized weight as shipped: w = codes · scale, per `group` inputs of each row."""
    codes: torch.Tensor  # int8 [N, K], signed
    scales: torch.Tensor  # [N, K/group], as stored
    bits: int

    @property
    def group(self) -> int:
        return self.codes.shape[1] // self.scales.shape[1]

    def dequantized(self) -> torch.Tensor:
        return self.codes.float() * self.scales.float().repeat_interleave(self.group, dim=1)


@dataclass(frozen=True)
class Fp8Codes:
    """An FP8 weight as shipped: w = codes · scale_inv of its 128x128 block (daemon.model.fp8's form)."""
    codes: torch.Tensor  # float8_e4m3fn [N, K]
    scale_inv: torch.Tensor  # float32 [ceil(N/128), ceil(K/128)]


def fp8_dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """float8 [N, K] and one scale per block [ceil(N/bn), ceil(K/bk)] -> float32 [N, K]."""
    rows, cols = weight.shape
    scale = scale_inv.float().repeat_interleave(block[0], dim=0)[:rows]
    return weight.float() * scale.repeat_interleave(block[1], dim=1)[:, :cols]


def unpack_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """int32 words [N, ceil(K·bits/32)] -> signed codes int8 [N, K] (bits 4 or 8: no code straddles words)."""
    per_word = WORD_BITS // bits
    shifts = torch.arange(per_word, dtype=torch.int32) * bits
    unsigned = (packed[..., None] >> shifts) & ((1 << bits) - 1)  # arithmetic shift: the mask drops sign bits
    return (unsigned.reshape(packed.shape[0], -1)[:, :cols] - (1 << (bits - 1))).to(torch.int8)


def _quantization_config(directory: Path) -> dict | None:
    raw = json.loads((directory / "config.json").read_text())
    return raw.get("quantization_config")


def _check_fp8(config: dict) -> tuple[int, int]:
    if config.get("fmt", "e4m3") != "e4m3":
        raise CheckpointError(f"FP8 format {config['fmt']!r} is not supported (only e4m3, as Qwen ships)")
    block = config.get("weight_block_size")
    if block is None or len(block) != 2:
        raise CheckpointError(f"FP8 checkpoints without a 2-D weight_block_size are not supported (got {block!r})")
    return tuple(block)


def _check_packed(config: dict) -> None:
    if config.get("format") != PACKED_FORMAT:
        raise CheckpointError(f"compressed-tensors format {config.get('format')!r} is not supported; "
                              f"only {PACKED_FORMAT!r} (W4A16 / W8A16 int weights)")
    for name, group in config.get("config_groups", {}).items():
        weights = group.get("weights") or {}
        if (weights.get("type"), weights.get("symmetric"), weights.get("num_bits")) not in (
                ("int", True, 4), ("int", True, 8)):
            raise CheckpointError(f"compressed-tensors group {name!r} quantizes weights as {weights}; only "
                                  "symmetric int 4- or 8-bit weights are supported")
        if group.get("input_activations"):
            raise CheckpointError(f"compressed-tensors group {name!r} quantizes activations too; only weight-only "
                                  "(W4A16 / W8A16) checkpoints are supported")


class QuantizedCheckpointFiles(CheckpointFiles):
    """CheckpointFiles whose `read` dequantizes FP8 and packed weights (float32), and which hands packed
    codes over as shipped (`packed`)."""

    def __init__(self, directory: Path, fp8_block: tuple[int, int] = FP8_BLOCK):
        super().__init__(directory)
        self.fp8_block = fp8_block

    def __contains__(self, name: str) -> bool:
        return super().__contains__(name) or (name.endswith(".weight") and super().__contains__(name + "_packed"))

    def read(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        if name.endswith(".weight") and super().__contains__(name + "_scale_inv"):
            weight = fp8_dequantize(super().read(name, shape), super().read(name + "_scale_inv"), self.fp8_block)
        elif name.endswith(".weight") and super().__contains__(name + "_packed"):
            weight = self.packed(name, shape).dequantized()
        else:
            weight = super().read(name, shape)
            if weight.dtype == torch.float8_e4m3fn:
                raise CheckpointError(f"tensor {name!r} in {self.directory} is FP8 without a {name}_scale_inv "
                                      "beside it; this layout is not supported")
        return weight

    def fp8(self, name: str, shape: tuple[int, ...] | None = None) -> Fp8Codes | None:
        """The shipped FP8 codes and block scales of the weight `name` (".weight"), or None if it is not
        FP8 in the 128x128 blocks daemon.model.fp8 multiplies by."""
        if not (name.endswith(".weight") and super().__contains__(name + "_scale_inv")) or self.fp8_block != FP8_BLOCK:
            return None
        return Fp8Codes(super().read(name, shape), super().read(name + "_scale_inv").float())

    def packed(self, name: str, shape: tuple[int, ...] | None = None) -> PackedCodes | None:
        """The shipped codes and scales of the weight `name` (".weight"), or None if it is not packed."""
        if not (name.endswith(".weight") and super().__contains__(name + "_packed")):
            return None
        if super().__contains__(name + "_zero_point"):
            raise CheckpointError(f"{name} has a zero point (an asymmetric scheme); only symmetric int weights "
                                  "are supported")
        rows, cols = (int(n) for n in super().read(name + "_shape"))
        if shape is not None and (rows, cols) != tuple(shape):
            raise CheckpointError(f"tensor {name!r} in {self.directory} has shape {(rows, cols)}, expected "
                                  f"{tuple(shape)}")
        packed = super().read(name + "_packed")
        bits = packed.shape[1] * WORD_BITS // cols
        if bits not in (4, 8) or packed.shape[1] * WORD_BITS != cols * bits:
            raise CheckpointError(f"{name}_packed {tuple(packed.shape)} holds neither 4- nor 8-bit codes of "
                                  f"{cols} inputs")
        scales = super().read(name + "_scale")
        if scales.shape[0] != rows or cols % scales.shape[1]:
            raise CheckpointError(f"{name}_scale {tuple(scales.shape)} does not fit weight {(rows, cols)}")
        return PackedCodes(unpack_int32(packed, bits, cols), scales, bits)


def open_checkpoint(directory: Path) -> CheckpointFiles:
    """The checkpoint's files, dequantizing as its config's `quantization_config` says; refuses schemes
    this loader cannot read, naming them."""
    config = _quantization_config(directory)
    if config is None:
        return CheckpointFiles(directory)
    method = config.get("quant_method")
    if method == FP8:
        return QuantizedCheckpointFiles(directory, _check_fp8(config))
    if method == PACKED:
        _check_packed(config)
        return QuantizedCheckpointFiles(directory)
    raise CheckpointError(f"{directory} is quantized with {method!r}, which mtpchatd cannot read; use the "
                          "bf16, FP8 (quant_method 'fp8') or compressed-tensors pack-quantized release")
