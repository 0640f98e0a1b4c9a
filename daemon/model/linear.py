"""Linear layers that stay cheap for the few rows of a decode or verify step on the CPU.

Speculative decoding pays off when verifying k+1 tokens costs about what decoding one does: the
weights are read once for all rows. On the CPU in float32, F.linear does not give that: each extra
row of 2-8 costs nearly as much as the first. Measured on this project's 2-core machine
(`torch.set_num_threads(2)`, median of 200): a 1536x576 projection takes 48 µs for 1 row, 93 µs for
2 and 141 µs for 4 with F.linear, but 59 µs and 76 µs for 2 and 4 as weight @ rows.T (a tall, thin
product); SmolLM2's 49152x576 lm_head 6.7 ms for 1 row and 13.7 ms for 2 with F.linear, 2.3 ms for 2
as weight @ rows.T. That product is also slower for an odd number of rows (1 row takes the
matrix-vector kernel) and for the strided view a reshape leaves, so rows are made contiguous and an
odd count is padded with a copy of the last row. On the demo model a decode step went from 38 to
20 ms and a 2-4 token verify from 55-68 ms to 20-23 ms. Prefill (more rows), other dtypes and GPUs
keep F.linear.

Where this project's CPU kernels are loaded (daemon/model/cpu_kernels.py), a few rows take its own
product instead (f32_mm.cpp, outside autograd; inputs a multiple of 16): torch's products streamed the
demo's layers at 4.3-5.3 GB/s on an Intel Sapphire Rapids core whose memory reads 13.7 (one stream) to
15.9 (four), its own at 14.3 (1 row) and 13.8 (3 rows) — cold weights, 30 copies of each layer, /tmp
driver — and each output is summed in one fixed order, so a verify's rows round exactly as decode steps do.
"""


from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from daemon.model import cpu_kernels

FEW_ROWS = 8  # up to this many rows (batch x tokens: a verify of k+1 <= 5) take the weight-streaming product


def few_rows(x: torch.Tensor) -> bool:
    """Whether x [..., in] is the few rows (batch x tokens) of a decode or verify step."""
    return x.numel() <= FEW_ROWS * x.shape[-1]


def own_product(weight: torch.Tensor) -> bool:
    """Whether a few rows times `weight` take this project's kernel (f32_mm.cpp: outside autograd, inputs a
    multiple of 16), whose rows never depend on one another."""
    return (cpu_kernels.LOADED and weight.is_cpu and weight.dtype == torch.float32
            and not torch.is_grad_enabled() and weight.shape[1] % 16 == 0 and weight.is_contiguous())


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., in] @ weight[out, in].T, as F.linear computes it, fast for a few rows on the CPU."""
    if few_rows(x) and own_product(weight):
        return torch.ops.mtpchat_cpu.f32_mm(x, weight)
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not few_rows(x):
        return F.linear(x, weight)
    rows = x.numel() // x.shape[-1]
    flat = x.reshape(rows, x.shape[-1])
    if rows % 2:
        flat = torch.cat((flat, flat[-1:]))
    out = weight @ flat.contiguous().t()
    return out[:, :rows].t().reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """A bias-free nn.Linear (same parameter name and layout) computed by `linear`.

    `rows_alone`: a few rows are multiplied one at a time, each exactly as a 1-row decode step multiplies
    it. The product of a few rows at once is as right but may round a row differently than it rounds the
    row alone (the matrix kernel blocks its sums by the column count), and a quantized model's kernels
    round their inputs, which can turn such a last-bit difference into a flipped near-tie: so the small
    layers a quantized model keeps in float (daemon.model.quantized.KEEP_FLOAT: the MoE router, gates,
    DeltaNet's b and a projections) take this, while a float model's big layers keep the fast product.
    Where `linear` takes this project's kernel the rows already round alone, and one call does it."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)
        self.rows_alone = False

    def forward(self, x: torch.Tensor, outputs: int | None = None) -> torch.Tensor:
        """x [..., in] -> [..., out], or only the first `outputs` features (a reduced draft vocabulary)."""
        weight = self.weight if outputs is None else self.weight[:outputs]
        # the flag first: the decode loop's hot path
        if self.rows_alone and x.numel() > x.shape[-1] and few_rows(x) and not own_product(weight):
            flat = x.reshape(-1, x.shape[-1])
            out = torch.cat([linear(flat[row:row + 1], weight) for row in range(flat.shape[0])])
            return out.reshape(*x.shape[:-1], out.shape[-1])
        return linear(x, weight)


def stacked_layers(model: nn.Module) -> dict[str, tuple[tuple[str, int], ...]]:
    """Every stacked layer of `model` (a module with `stacks`: qkv_proj, gate_up_proj) by its full name ->
    the full names of the checkpoint's layers it stacks, with their rows, in order."""
    found = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for layer, parts in getattr(module, "stacks", {}).items():
            found[prefix + layer] = tuple((prefix + part, rows) for part, rows in parts)
    return found


def checkpoint_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s state in the checkpoint's layout: each stacked weight split back into its layers' weights."""
    stacked = stacked_layers(model)
    tensors = {}
    for name, tensor in model.state_dict().items():
        layer = name.removesuffix(".weight")
        if layer not in stacked:
            tensors[name] = tensor
            continue
        for (part, _), rows in zip(stacked[layer], tensor.split([rows for _, rows in stacked[layer]])):
            tensors[f"{part}.weight"] = rows
    return tensors
