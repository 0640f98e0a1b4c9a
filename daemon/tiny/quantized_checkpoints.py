"""Tiny checkpoints in the layouts that ship quantized, each with its dequantized twin.

The same seeded tiny models as daemon.tiny.qwen_checkpoints, with the trunk's linear weights written
as Qwen's FP8 releases write them (float8_e4m3fn + `weight_scale_inv` per 128x128 block, routed experts
per expert) or as compressed-tensors "pack-quantized" (int32 words of 4- or 8-bit codes + scales +
shape), and what those releases keep in bf16 kept in float: embedding, lm_head, norms, conv1d,
DeltaNet's in_proj_a/in_proj_b, the router, the shared-expert gate, `mtp.*`, the vision tower
(daemon.weights.prequantized lists the sources). The twin (`<name>-dequantized`) holds, in float32 at
the same names, the weights the quantized tensors stand for, computed here block by block and code by
code, independently of the loader's own reading, so a test can load both and compare.

The FP8 block stays 128x128 as in the real releases: the tiny matrices (64-256 wide) then have one or
two blocks per side, the last ones partial, which is the case the ceil() in the scale shape exists for.
The int4 group is 32 (real W4A16 releases use 32 or 128; 128 is wider than the tiny matrices).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from daemon.tiny.qwen_checkpoints import build_checkpoint, split_experts

FP8_BLOCK = 128
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max
PACKED_GROUP = 32
TWIN = "-dequantized"
# name -> (model kind, format, bits, group: None = per channel)
VARIANTS = {
    "qwen3.6-dense-tiny-fp8": ("dense", "fp8", 8, None),
    "qwen3.6-moe-tiny-fp8": ("moe", "fp8", 8, None),
    "qwen3.6-dense-tiny-w4a16": ("dense", "packed", 4, PACKED_GROUP),
    "qwen3.6-moe-tiny-w4a16": ("moe", "packed", 4, PACKED_GROUP),
    "qwen3.6-dense-tiny-w8a16": ("dense", "packed", 8, None),
}
TRUNK = "model.language_model.layers."
KEPT_FLOAT = re.compile(r".*(norm|conv1d|in_proj_a|in_proj_b|mlp\.gate|shared_expert_gate)\.weight$")
PACKED_IGNORE = ["lm_head", "re:.*mtp.*", "re:.*visual.*", "re:.*mlp.gate$", "re:.*shared_expert_gate$",
                 "re:.*linear_attn.in_proj_a$", "re:.*linear_attn.in_proj_b$"]


def _per_expert(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk's fused experts written one tensor per expert and projection, as the FP8 and
    compressed-tensors releases have them (the MTP layer keeps its fused bf16 tensors)."""
    out = {name: tensor for name, tensor in tensors.items() if not _fused_trunk_experts(name)}
    for name in filter(_fused_trunk_experts, tensors):
        if name.endswith(".gate_up_proj"):
            base = name.removesuffix(".gate_up_proj")
            out.update(split_experts(base, tensors[name], tensors[f"{base}.down_proj"]))
    return out


def _fused_trunk_experts(name: str) -> bool:
    return name.startswith(TRUNK) and name.endswith(("experts.gate_up_proj", "experts.down_proj"))


def _quantized(name: str, tensor: torch.Tensor) -> bool:
    return name.startswith(TRUNK) and name.endswith(".weight") and tensor.dim() == 2 and not KEPT_FLOAT.match(name)


def fp8_blocks(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(float8 weight, scale_inv [ceil(N/128), ceil(K/128)], the float32 weight they stand for), each
    block scaled so its largest magnitude is the format's maximum, as Qwen's and DeepSeek's tools do."""
    rows, cols = weight.shape
    fp8 = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    scale_inv = torch.empty(math.ceil(rows / FP8_BLOCK), math.ceil(cols / FP8_BLOCK))
    twin = torch.empty(rows, cols)
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            block = (slice(i * FP8_BLOCK, (i + 1) * FP8_BLOCK), slice(j * FP8_BLOCK, (j + 1) * FP8_BLOCK))
            scale_inv[i, j] = weight[block].abs().amax() / FP8_MAX
            fp8[block] = (weight[block] / scale_inv[i, j]).to(torch.float8_e4m3fn)
            twin[block] = fp8[block].float() * scale_inv[i, j]
    return fp8, scale_inv, twin


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes [N, K] -> int32 words as compressed_tensors' pack_to_int32 writes them: q + 2^(bits-1),
    element j of each run of 32/bits at bits [j·bits, (j+1)·bits)."""
    per_word = 32 // bits
    unsigned = (codes.long() + (1 << (bits - 1))).reshape(codes.shape[0], -1, per_word)
    words = sum(unsigned[..., j] << (j * bits) for j in range(per_word))
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def int_groups(weight: torch.Tensor, bits: int, group: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(signed codes [N, K], bfloat16 scales [N, K/group], the float32 weight they stand for): symmetric,
    scale = group max / (2^(bits-1) - 1), as llm-compressor's minmax observer sets it."""
    rows, cols = weight.shape
    group = group or cols
    top = (1 << (bits - 1)) - 1
    groups = weight.reshape(rows, cols // group, group)
    scales = (groups.abs().amax(dim=-1) / top).to(torch.bfloat16)
    codes = (groups / scales.float()[..., None]).round().clamp(-top - 1, top).to(torch.int8)
    twin = torch.empty(rows, cols)
    for g in range(cols // group):
        twin[:, g * group:(g + 1) * group] = codes[:, g].float() * scales[:, g, None].float()
    return codes.reshape(rows, cols), scales, twin


def _converted(tensors: dict, store, twin: bool) -> dict:
    """Every tensor, with each one a release quantizes replaced by what `store(name, tensor)` writes for
    it — or, for the twin, by the float weight those stored values stand for (store's last item)."""
    out = {}
    for name, tensor in _per_expert(tensors).items():
        if not _quantized(name, tensor):
            out[name] = tensor
            continue
        stored, dequantized = store(name, tensor)
        out.update({name: dequantized} if twin else stored)
    return out


def _fp8_convert(twin: bool):
    def store(name, tensor):
        fp8, scale_inv, dequantized = fp8_blocks(tensor)
        return {name: fp8, name.removesuffix(".weight") + ".weight_scale_inv": scale_inv}, dequantized

    def convert(tensors):
        out = _converted(tensors, store, twin)
        kept = sorted({name.removesuffix(".weight") for name in out
                       if name.startswith(TRUNK) and KEPT_FLOAT.match(name)})
        config = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                  "weight_block_size": [FP8_BLOCK, FP8_BLOCK],
                  "modules_to_not_convert": ["lm_head", "model.language_model.embed_tokens", "model.visual", "mtp",
                                             *kept]}
        return out, None if twin else config
    return convert


def _packed_convert(bits: int, group: int | None, twin: bool):
    def store(name, tensor):
        codes, scales, dequantized = int_groups(tensor, bits, group)
        base = name.removesuffix(".weight")
        return {f"{base}.weight_packed": pack_int32(codes, bits), f"{base}.weight_scale": scales,
                f"{base}.weight_shape": torch.tensor(tensor.shape, dtype=torch.int64)}, dequantized

    def convert(tensors):
        weights = {"num_bits": bits, "type": "int", "symmetric": True, "dynamic": False, "observer": "minmax",
                   "strategy": "group" if group else "channel", "group_size": group}
        config = {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
                  "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                                "output_activations": None, "format": "pack-quantized"}},
                  "ignore": PACKED_IGNORE}
        return _converted(tensors, store, twin), None if twin else config
    return convert


def build_quantized(root: Path, seed: int = 0) -> dict[str, Path]:
    """Every variant and its twin (`name + TWIN`) under root."""
    paths = {}
    for name, (kind, fmt, bits, group) in VARIANTS.items():
        for twin in (False, True):
            convert = _fp8_convert(twin) if fmt == "fp8" else _packed_convert(bits, group, twin)
            label = name + TWIN if twin else name
            paths[label] = build_checkpoint(Path(root) / label, kind, "fused", seed, convert)
    return paths
