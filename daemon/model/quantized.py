"""Weight-only int8 and int4 layers on torch's own CPU kernels, and the swap that puts them in a model.

int8 is symmetric per output channel (`torch._weight_int8pack_mm(x, w_int8 [N, K], scales [N])`);
int4 is group-wise with a scale and a zero point per `group` inputs of each output row, in torch's
convention w = (q - 8)·scale + zero, q in 0..15 (`torch._convert_weight_to_int4pack_for_cpu` packs
codes [N, K] into [N, K/2] bytes, `torch._weight_int4pack_mm_for_cpu(x, packed, group,
scales_and_zeros [K/group, N, 2])` multiplies). GGUF's Q4_1 (w = d·q + m, blocks of 32) is that
form at group 32 with scale d and zero m + 8d, so its codes are taken as shipped (`load_codes`).

Both kernels are vectorised on the CPU only for bfloat16 activations: measured in torch 2.13 on this
project's AVX-512 machine (1 thread, median), a 1536x576 matrix times one row takes 46 µs (int8) and
30 µs (int4) with bfloat16 rows but 628 µs and 1434 µs with float32 rows (a scalar loop; float16 is
as slow), against 177 µs for float32 F.linear. So the kernels are fed bfloat16 rows and their scales
are kept in bfloat16 (the kernel takes no other mix) whatever the model's compute dtype; outputs go
back to it, and everything outside these matmuls (norms, attention, DeltaNet state, the embedding)
stays in it. The cost is the bfloat16 rounding of the kernel's inputs, outputs and scales (relative
2^-9), well below the 4- or 8-bit rounding of the weights themselves. MTP decoding of a quantized
model stays token-identical to its plain decoding: the kernels give each row the same result however
many rows they multiply, and a verify's attention runs its query rows one at a time, each exactly as a
1-token decode step (daemon/model/attention.py), so no bfloat16 rounding sees different inputs.

What is left in the compute dtype: matrices the int4 kernel cannot take (out_features not a multiple
of 16, in_features not a multiple of the group) and the small gates whose outputs are softmaxed or
squashed per expert or head (the MoE router, the shared-expert gate, DeltaNet's b and a projections:
a fraction of a percent of the weights, and routing decisions are the most sensitive to rounding).
The lm_head is quantized to int8 whenever the trunk is quantized: the output layer is where 4-bit
rounding hurts most (llama.cpp keeps it at 6-8 bits for that reason). The MTP head follows its own
setting, since its rounding costs only acceptance, never correctness.

Why torch's ops and not torchao: torchao's CPU int4 weight-only tensor (Int4OpaqueTensor, read in
pytorch/ao) packs with the same `_convert_weight_to_int4pack_for_cpu` and multiplies with the same
`_weight_int4pack_mm_for_cpu`, so it would add a dependency and a tensor subclass (which our state cache,
compile and loader would have to see through) for the same kernel; its other CPU path (da8w4) quantizes
the activations to int8 as well, which weight-only quantization excludes.

CPU only: CUDA's int4 kernel wants a different packing (`_convert_weight_to_int4pack` on uint8 pairs
with inner k-tiles) that no machine of this project's CI can test; the loader refuses other devices.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from daemon.model.linear import Linear
from daemon.model.mlp import RoutedExperts


class Quantization(Protocol):
    """What to quantize how; `mtpchat.config.Quantization` is one (the model layer imports no config)."""
    method: str  # "none" | "int8" | "int4", the trunk's linear layers
    group: int  # int4: inputs per scale and zero point
    mtp_method: str  # the MTP head's

KERNEL_DTYPE = torch.bfloat16  # the only activation dtype torch's CPU weight-only kernels vectorise
INT4_ROWS = 16  # the int4 CPU packing takes out_features in multiples of this
QUANTIZE_ROWS = 4096  # rows quantized at a time while loading: a multiple of 64, the int4 packing's row
# block (it interleaves rows within blocks of 64, a shorter last block on its own: measured in torch 2.13)
# Linear layers left in the compute dtype whatever the setting (see the module docstring), by name.
KEEP_FLOAT = ("mlp.gate", "mlp.shared_expert_gate", "linear_attn.in_proj_b", "linear_attn.in_proj_a")


def _row_blocks(weight: torch.Tensor):
    """(rows, weight[rows]) in blocks of QUANTIZE_ROWS: codes, scales and zeros are per row (and group),
    so quantizing block by block gives the whole matrix's result, while the float32 copies quantizing
    makes stay the size of a block, not of the matrix (a 27B lm_head is 4.7 GiB in float32)."""
    for start in range(0, weight.shape[0], QUANTIZE_ROWS):
        rows = slice(start, start + QUANTIZE_ROWS)
        yield rows, weight[rows]


def int8_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [..., N, K] -> (codes int8 [..., N, K], scales [..., N] in KERNEL_DTYPE), symmetric per
    row: w ≈ codes·scale. The scale is rounded to KERNEL_DTYPE before the codes are chosen, so codes·scale
    is the nearest grid point of the scale the kernel uses."""
    weight = weight.float()
    scales = (weight.abs().amax(dim=-1) / 127).clamp_min(torch.finfo(torch.float32).tiny).to(KERNEL_DTYPE)
    codes = (weight / scales.float()[..., None]).round().clamp(-127, 127).to(torch.int8)
    return codes, scales


def int4_quantize(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (codes 0..15 [N, K], scales [N, K/group], zeros [N, K/group]) in torch's
    convention w ≈ (codes - 8)·scale + zero, from each group's min and max. Scales and zeros are rounded
    to KERNEL_DTYPE before the codes are chosen."""
    rows, cols = weight.shape
    groups = weight.float().reshape(rows, cols // group, group)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = ((high - low) / 15).clamp_min(torch.finfo(torch.float32).tiny).to(KERNEL_DTYPE).float()
    zeros = (low + 8 * scales).to(KERNEL_DTYPE).float()
    codes = ((groups - zeros[..., None]) / scales[..., None] + 8).round().clamp(0, 15)
    return codes.reshape(rows, cols).to(torch.uint8), scales, zeros


def q4_1_to_int4(codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GGUF Q4_1 blocks (w = d·q + m, codes 0..15 [N, K], d and m [N, K/32]) in torch's int4 convention
    at group 32: the same codes, scale d, zero m + 8d (computed in float32, where it is exact for every
    block of the demo model: d and m are float16, 11 significant bits each)."""
    d, m = d.float(), m.float()
    return codes, d, m + 8 * d


class Int8Linear(nn.Module):
    """A bias-free linear layer with int8 weights, symmetric per output channel."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(out_features, dtype=KERNEL_DTYPE))

    @property
    def device(self) -> torch.device:
        return self.scales.device

    def load(self, weight: torch.Tensor) -> None:
        for rows, block in _row_blocks(weight):
            self.load_codes(*int8_quantize(block), rows)

    def load_codes(self, codes: torch.Tensor, scales: torch.Tensor, rows: slice = slice(None)) -> None:
        """codes int8 [out, in]; scales [out] (rounded to KERNEL_DTYPE): w = codes·scale (of `rows` only)."""
        self.weight_int8[rows].copy_(codes)
        self.scales[rows].copy_(scales)

    def forward(self, x: torch.Tensor, outputs: int | None = None) -> torch.Tensor:
        """x [..., in] -> [..., out] (only the first `outputs` features when given), in x's dtype."""
        flat = x.reshape(-1, self.in_features).to(self.scales.dtype)
        out = torch._weight_int8pack_mm(flat, self.weight_int8[:outputs], self.scales[:outputs])
        return out.to(x.dtype).reshape(*x.shape[:-1], out.shape[-1])

    def dequantized(self) -> torch.Tensor:
        """The weight the kernel multiplies by, [out, in] in float32 (exact: codes·scale)."""
        return self.weight_int8.float() * self.scales.float()[:, None]


class Int4Linear(nn.Module):
    """A bias-free linear layer with int4 weights, a scale and a zero point per `group` inputs."""

    def __init__(self, in_features: int, out_features: int, group: int):
        super().__init__()
        self.in_features, self.out_features, self.group = in_features, out_features, group
        self.register_buffer("packed", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales_and_zeros", torch.empty(in_features // group, out_features, 2, dtype=KERNEL_DTYPE))

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @staticmethod
    def fits(in_features: int, out_features: int, group: int) -> bool:
        return out_features % INT4_ROWS == 0 and in_features % group == 0

    def load(self, weight: torch.Tensor) -> None:
        for rows, block in _row_blocks(weight):
            self.load_codes(*int4_quantize(block, self.group), rows)

    def load_codes(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                   rows: slice = slice(None)) -> None:
        """codes 0..15 [out, in]; scales, zeros [out, in/group]: w = (codes - 8)·scale + zero (of `rows`
        only, starting at a multiple of 64 rows: blocks of 64 rows pack as within the whole matrix)."""
        self.packed[rows].copy_(torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1))
        self.scales_and_zeros[:, rows].copy_(torch.stack((scales, zeros), dim=-1).transpose(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out]. (No first-outputs form as Linear and Int8Linear have: the packing
        interleaves rows, and the lm_head, the one layer asked for it, is never int4.)"""
        flat = x.reshape(-1, self.in_features).to(self.scales_and_zeros.dtype)
        out = torch._weight_int4pack_mm_for_cpu(flat, self.packed, self.group, self.scales_and_zeros)
        return out.to(x.dtype).reshape(*x.shape[:-1], out.shape[-1])

    def dequantized(self) -> torch.Tensor:
        """The weight the kernel multiplies by, [out, in] in float32: the kernel's own float32 path applied
        to the identity, so each entry is (q - 8)·scale + zero with the scale and zero exactly as stored.
        A reference for tests (it costs in_features kernel rows)."""
        eye = torch.eye(self.in_features, device=self.device)
        return torch._weight_int4pack_mm_for_cpu(eye, self.packed, self.group, self.scales_and_zeros.float()).t()


def quantized_linear(method: str, in_features: int, out_features: int, group: int) -> nn.Module | None:
    """The quantized layer for `method`, or None where the kernel cannot take the shape."""
    if method == "int8":
        return Int8Linear(in_features, out_features)
    if method == "int4" and Int4Linear.fits(in_features, out_features, group):
        return Int4Linear(in_features, out_features, group)
    return None


class QuantizedExperts(nn.Module):
    """RoutedExperts with each expert's gate_up_proj [2I, H] and down_proj [H, I] a quantized layer.

    Forward loops over the experts that were hit (top_k per token: a decode step touches top_k
    experts, a verify at most (k+1)·top_k), each a kernel call over the rows routed to it. torch has no
    batched (per-expert) form of these kernels, and gathering the chosen experts' int8 weights, as the
    float path gathers its own, has to widen them to a float dtype first. Measured at Qwen3.6-35B-A3B's
    expert shape (hidden 2048, expert ffn 512, top-8; 2 threads on a shared, loaded machine, median of
    21): one token 211 ms float gather, 135 ms int8 gather with the scales applied after, 20 ms int8
    loop, 10 ms int4 loop; five tokens 1016, 844, 422 and 134 ms.
    """

    def __init__(self, num_experts: int, hidden: int, intermediate: int, method: str, group: int):
        super().__init__()
        self.gate_up_proj = nn.ModuleList(quantized_linear(method, hidden, 2 * intermediate, group)
                                          for _ in range(num_experts))
        self.down_proj = nn.ModuleList(quantized_linear(method, intermediate, hidden, group)
                                       for _ in range(num_experts))

    def load(self, kind: str, weight: torch.Tensor) -> None:
        """Fill every expert's `kind` ("gate_up_proj" or "down_proj") from the fused [E, out, in] tensor."""
        for layer, expert_weight in zip(getattr(self, kind), weight, strict=True):
            layer.load(expert_weight)

    def forward(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [N, H]; experts, weights [N, top_k] -> weighted sum of the chosen experts [N, H]."""
        result = torch.zeros_like(x)
        for expert in experts.unique().tolist():
            token, choice = torch.where(experts == expert)
            gate, up = self.gate_up_proj[expert](x[token]).chunk(2, dim=-1)
            out = self.down_proj[expert](F.silu(gate) * up) * weights[token, choice, None]
            result.index_add_(0, token, out)
        return result


def quantized_weights(model: nn.Module) -> Iterator[tuple[str, nn.Module, torch.Size]]:
    """Every weight the model's quantized layers hold, as a checkpoint stores it: (name, layer, shape) for
    each Int8Linear and Int4Linear ([out, in]) and for each QuantizedExperts' fused gate_up_proj and
    down_proj (named `<experts>.<kind>`, [E, out, in]); the per-expert layers inside are not listed
    apart. What the loader fills, and what the load-memory measurement counts."""
    experts: tuple[str, ...] = ()
    for name, module in model.named_modules():
        if name.startswith(experts):
            continue
        if isinstance(module, QuantizedExperts):
            experts += (f"{name}.",)
            for kind in ("gate_up_proj", "down_proj"):
                layers = getattr(module, kind)
                yield f"{name}.{kind}", module, torch.Size((len(layers), layers[0].out_features, layers[0].in_features))
        elif isinstance(module, (Int8Linear, Int4Linear)):
            yield name, module, torch.Size((module.out_features, module.in_features))


def _method_for(name: str, quantization: Quantization) -> str:
    if name == "lm_head":
        return "none" if quantization.method == "none" else "int8"
    if name.endswith(KEEP_FLOAT):
        return "none"
    return quantization.mtp_method if name.startswith("mtp.") else quantization.method


def quantize_modules(model: nn.Module, quantization: Quantization) -> None:
    """Swap every Linear and RoutedExperts of `model` that `quantization` covers for its quantized form.
    Call it inside `with torch.device("meta")` on a model built there, before storage is allocated: the
    loader then fills the new layers (`load` / `load_codes`) tensor by tensor."""
    group = quantization.group
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            method = _method_for(name, quantization)
            layer = None
            if method != "none" and isinstance(child, Linear):
                layer = quantized_linear(method, child.in_features, child.out_features, group)
            elif method != "none" and isinstance(child, RoutedExperts):
                experts, double_intermediate, hidden = child.gate_up_proj.shape
                intermediate = double_intermediate // 2
                if method == "int8" or (Int4Linear.fits(hidden, 2 * intermediate, group)
                                        and Int4Linear.fits(intermediate, hidden, group)):
                    layer = QuantizedExperts(experts, hidden, intermediate, method, group)
            if layer is not None:
                setattr(parent, child_name, layer)
