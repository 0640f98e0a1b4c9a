"""What every quantized linear layer shares (daemon.model.quantized's int8 and int4, daemon.model.fp8's
FP8): an optional leading dimension of routed experts, and quantizing a large matrix a block of rows at
a time while loading."""

from __future__ import annotations

import copy

import torch
from torch import nn

QUANTIZE_ROWS = 4096  # rows quantized at a time while loading: a multiple of int4's 64-row packing blocks
# and of FP8's 128-row scale blocks


def row_blocks(weight: torch.Tensor):
    """(first row, the block's rows) in blocks of QUANTIZE_ROWS: codes and scales are per row (or per
    block of rows that QUANTIZE_ROWS is a multiple of), so quantizing block by block gives the whole
    matrix's result, while the float32 copies quantizing makes stay the size of a block, not of the
    matrix (a 27B lm_head is 4.7 GiB in float32)."""
    for start in range(0, weight.shape[0], QUANTIZE_ROWS):
        yield start, weight.narrow(0, start, min(QUANTIZE_ROWS, weight.shape[0] - start))


class QuantizedLayer(nn.Module):
    """A layer whose buffers may carry a leading dimension of experts (a stacked layer, one matrix per
    routed expert), and picking one expert's tensors for a kernel call."""

    experts: int  # stacked layers: how many; 0 for a plain layer

    def expert(self, index: int) -> QuantizedLayer:
        """Expert `index` of a stacked layer as a plain layer over the same storage (views, no copy): what
        the loader fills and tests read."""
        layer = copy.copy(self)
        layer._buffers = {name: tensor.select(0, index) for name, tensor in self._buffers.items()}
        layer.experts = 0
        return layer

    def picked(self, expert: int | torch.Tensor | None, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`tensors` of one expert: a view for a Python index, a gathered copy for a device index (what a
        graph can hold: no host synchronisation), the tensors themselves for a plain layer."""
        if expert is None:
            return tensors
        if isinstance(expert, int):
            return tuple(tensor.select(0, expert) for tensor in tensors)
        return tuple(tensor.index_select(0, expert.reshape(1)).squeeze(0) for tensor in tensors)
