"""The two RMSNorms of Qwen3.5/3.6.

Every norm in the trunk and the MTP head is zero-centred (`x̂ · (1 + w)`, so a fresh weight of zeros
is the identity), except the gated norm at the output of Gated DeltaNet, which scales by a plain `w`
and gates with `silu(z)`. Both normalise in float32 whatever the weight dtype.
"""

import torch
from torch import nn
from torch.nn import functional as F


def _rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """Zero-centred RMSNorm: the weight is an offset from 1."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (_rms_normalize(x, self.eps) * (1.0 + self.weight.float())).type_as(x)


class GatedRMSNorm(nn.Module):
    """`norm(x) · w · silu(z)`, applied per value head at the output of Gated DeltaNet."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        normed = self.weight * _rms_normalize(x, self.eps).to(x.dtype)
        return (normed * F.silu(gate.float())).to(x.dtype)
