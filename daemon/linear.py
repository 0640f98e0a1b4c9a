"""Linear layers that stay cheap for the few rows of a decode or verify step on the CPU.

Speculative decoding pays off when verifying k+1 tokens costs about what decoding one does: the
weights are read once for all rows. On the CPU in float32, F.linear does not give that: for 2-8 rows
the BLAS gemm repacks the whole weight on every call, so each extra row costs nearly a full weight
read. Measured on this project's 2-core machine (`torch.set_num_threads(2)`, median of 200): a
1536x576 projection takes 48 µs for 1 row, 93 µs for 2 and 141 µs for 4 with F.linear, but 59 µs and
76 µs as weight @ rows.T (a tall, thin product that streams the weight once); SmolLM2's 49152x576
lm_head 6.7 ms for 1 row, 13.7 ms for 2 with F.linear, 2.3 ms for 2 as weight @ rows.T. One row keeps
F.linear (a matrix-vector product already reads the weight once), and so do prefill, other dtypes
and GPUs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

FEW_ROWS = 8  # up to this many rows (batch x tokens: a verify of k+1 <= 5) take the weight-streaming product


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., in] @ weight[out, in].T, as F.linear computes it, fast for a few rows on the CPU."""
    rows = x.numel() // x.shape[-1]
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or rows > FEW_ROWS:
        return F.linear(x, weight)
    flat = x.reshape(rows, x.shape[-1])
    if rows % 2:  # odd column counts take a slower kernel (1 row: the matrix-vector one): pad with a copy
        flat = torch.cat((flat, flat[-1:]))
    out = weight @ flat.contiguous().t()  # a contiguous copy: the strided view of a reshape is slow too
    return out[:, :rows].t().reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """nn.Linear (same parameters and names, no bias) computed by `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)
