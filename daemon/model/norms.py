"""The RMSNorms: zero-centred (Qwen3.5/3.6), plain (Llama, Qwen3) and gated (DeltaNet's output).

Every norm in a Qwen3.5/3.6 trunk and MTP head is zero-centred (`x̂ · (1 + w)`, so a fresh weight of
zeros is the identity); Llama and Qwen3 scale by a plain `w`; the gated norm at the output of Gated
DeltaNet scales by a plain `w` and gates with `silu(z)`. All normalise in float32 for float32 and
narrower weights, in float64 for float64 ones (`accumulation_dtype`).
"""

import torch
from torch import nn
from torch.nn import functional as F

from daemon.model import cpu_kernels
from daemon.model.precision import accumulation_dtype


def _rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.to(accumulation_dtype(x.dtype))
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """Scales by `offset + w`: offset 1 is the zero-centred norm (weight an offset from 1), 0 the plain one."""

    def __init__(self, dim: int, eps: float, offset: float = 1.0):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.full((dim,), 1.0 - offset))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """F.rms_norm in the accumulation dtype: the same x̂ · scale as the ops spelled out, a few µs less
        per norm, two norms a layer. A plain norm's scale is its weight as it is (adding the offset 0 would
        be one more op a norm: 11.8 -> 6.6 µs on the demo's decode rows, 1 thread). On the CPU in float32,
        outside autograd, once the loader has loaded them (daemon/model/cpu_kernels.py), this project's
        kernel instead (rms_norm.cpp; in compiled steps too, so they round as eager ones do): F.rms_norm
        makes 22 aten calls there, 17.3 µs a norm with the module call on the demo's decode row where the
        kernel takes 5.4 (1 thread, Sapphire Rapids); a decode step of the demo has 61 norms."""
        if (cpu_kernels.LOADED and x.dtype == torch.float32 and x.is_cpu and self.weight.dtype == torch.float32
                and not torch.is_grad_enabled()):
            return torch.ops.mtpchat_cpu.rms_norm(x, self.weight, self.offset, self.eps)
        dtype = accumulation_dtype(x.dtype)
        scale = self.weight.to(dtype) if self.offset == 0 else self.offset + self.weight.to(dtype)
        return F.rms_norm(x.to(dtype), x.shape[-1:], scale, self.eps).type_as(x)


def rms_norm(config, dim: int | None = None) -> RMSNorm:
    """The model's kind of RMSNorm (see `TextConfig.norm_offset`), over `dim` (default: the hidden size)."""
    return RMSNorm(dim or config.hidden_size, config.rms_norm_eps, config.norm_offset)


class GatedRMSNorm(nn.Module):
    """`norm(x) · w · silu(z)`, applied per value head at the output of Gated DeltaNet."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        normed = self.weight * _rms_normalize(x, self.eps).to(x.dtype)
        return (normed * F.silu(gate.to(accumulation_dtype(x.dtype)))).to(x.dtype)
