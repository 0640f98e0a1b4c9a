"""Gated DeltaNet, the linear-attention mixer of three in four Qwen3.5/3.6 trunk layers.

in_proj_qkv feeds a depthwise causal conv1d (kernel 4) + SiLU whose window continues from the cache;
q and k are L2-normalised and their heads repeated to the value heads; beta = sigmoid(b) and
g = −exp(A_log)·softplus(a + dt_bias) drive the gated delta rule; a gated RMSNorm with silu(z) and
out_proj finish. Long inputs use the chunked rule, short ones the recurrent rule, which can record
the state (and conv window) after every token for rollback after speculative verification. On CUDA
kernels.py runs the rule on fla's kernels or this project's Triton one where they import.
"""

import torch
from torch import nn
from torch.nn import functional as F

from daemon.model import kernels
from daemon.model.cache import DeltaNetCache
from daemon.model.config import TextConfig
from daemon.model.linear import Linear
from daemon.model.norms import GatedRMSNorm
from daemon.model.precision import accumulation_dtype
from daemon.model.step_context import StepContext


def _l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


class GatedDeltaNet(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.num_k_heads = config.linear_num_key_heads
        self.num_v_heads = config.linear_num_value_heads
        self.k_dim = config.linear_key_head_dim
        self.v_dim = config.linear_value_head_dim
        key_size = self.num_k_heads * self.k_dim
        value_size = self.num_v_heads * self.v_dim
        self.split_sizes = [key_size, key_size, value_size]
        conv_dim = 2 * key_size + value_size
        hidden = config.hidden_size
        self.in_proj_qkv = Linear(hidden, conv_dim)
        self.in_proj_z = Linear(hidden, value_size)
        self.in_proj_b = Linear(hidden, self.num_v_heads)
        self.in_proj_a = Linear(hidden, self.num_v_heads)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, config.linear_conv_kernel_dim, groups=conv_dim, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(self.num_v_heads))
        self.A_log = nn.Parameter(torch.zeros(self.num_v_heads))
        self.norm = GatedRMSNorm(self.v_dim, config.rms_norm_eps)
        self.out_proj = Linear(value_size, hidden)

    def _causal_conv(self, mixed: torch.Tensor, cache: DeltaNetCache, keep_steps: bool) -> torch.Tensor:
        """Depthwise conv over [cached window | new inputs]; mixed is [B, conv_dim, T]."""
        if not keep_steps and mixed.shape[-1] <= kernels.RECURRENT_MAX_TOKENS and kernels.has_conv_kernel(mixed):
            return kernels.conv_update(mixed, cache.conv, self.conv1d.weight[:, 0, :])
        window = torch.cat((cache.conv, mixed.to(cache.conv.dtype)), dim=-1)
        width = cache.conv.shape[-1]
        if keep_steps:
            # The window after token t is window[..., t + 1 : t + 1 + width].
            steps = window.unfold(-1, width, 1)[:, :, 1:].permute(2, 0, 1, 3)
            cache.conv_steps[: steps.shape[0]].copy_(steps)
        cache.conv.copy_(window[:, :, -width:])
        if mixed.shape[-1] <= kernels.RECURRENT_MAX_TOKENS:  # a few taps per channel: cheaper than a conv call
            taps = window.unfold(-1, width + 1, 1)  # [B, conv_dim, T, kernel]
            return F.silu((taps * self.conv1d.weight[:, None, 0, :]).sum(-1))
        return F.silu(F.conv1d(window, self.conv1d.weight, groups=window.shape[1]))

    def forward(self, x: torch.Tensor, cache: DeltaNetCache, ctx: StepContext) -> torch.Tensor:
        batch, length, _ = x.shape
        if ctx.keep_steps and length > cache.max_steps:
            raise ValueError(f"{length} tokens need {length} state slots; the cache has {cache.max_steps}")
        mixed = self._causal_conv(self.in_proj_qkv(x).transpose(1, 2), cache, ctx.keep_steps)
        q, k, v = mixed.transpose(1, 2).split(self.split_sizes, dim=-1)
        repeat = self.num_v_heads // self.num_k_heads
        acc = accumulation_dtype(x.dtype)  # the recurrent state's dtype
        # -> [B, heads, T, dim] at `acc`; each key head serves `repeat` consecutive value heads
        q, k = (
            _l2_normalize(t.reshape(batch, length, self.num_k_heads, self.k_dim).to(acc))
            .repeat_interleave(repeat, dim=2).transpose(1, 2)
            for t in (q, k)
        )
        q = q * self.k_dim**-0.5
        v = v.reshape(batch, length, self.num_v_heads, self.v_dim).to(acc).transpose(1, 2)
        beta = torch.sigmoid(self.in_proj_b(x)).to(acc).transpose(1, 2)
        g = (-self.A_log.to(acc).exp() * F.softplus(self.in_proj_a(x).to(acc) + self.dt_bias.to(acc))).transpose(1, 2)
        out = kernels.delta_rule(q, k, v, g, beta, cache.state, cache.state_steps if ctx.keep_steps else None)
        out = out.transpose(1, 2).to(x.dtype)  # [B, T, v_heads, v_dim]
        z = self.in_proj_z(x).view(batch, length, self.num_v_heads, self.v_dim)
        return self.out_proj(self.norm(out, z).reshape(batch, length, -1))
