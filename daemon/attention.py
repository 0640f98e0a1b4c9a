"""Gated full attention of Qwen3.5/3.6 (every 4th trunk layer and the MTP layer).

q_proj emits [query | gate] per head; q and k get a per-head zero-centred RMSNorm and partial RoPE;
the attention output is scaled by sigmoid(gate) before o_proj. Keys/values go to the layer's
position-indexed cache, and queries attend over the first `kv_len` cache slots under a causal mask.
"""

import torch
from torch import nn
from torch.nn import functional as F

from daemon.cache import AttentionCache
from daemon.config import TextConfig
from daemon.norms import RMSNorm
from daemon.rope import apply_rotary
from daemon.step_context import StepContext


class GatedAttention(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim * 2, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cache: AttentionCache, ctx: StepContext) -> torch.Tensor:
        batch, length, _ = x.shape
        query, gate = self.q_proj(x).view(batch, length, self.num_heads, 2 * self.head_dim).chunk(2, dim=-1)
        query = apply_rotary(self.q_norm(query), ctx.cos, ctx.sin)
        key = self.k_norm(self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim))
        key = apply_rotary(key, ctx.cos, ctx.sin)
        value = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim)
        cache.write(ctx.positions, key, value)
        keys, values = cache.window(ctx.kv_len)
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2), keys.to(query.dtype), values.to(query.dtype),
            attn_mask=ctx.mask, enable_gqa=self.num_heads != self.num_kv_heads,
        )
        out = out.transpose(1, 2).reshape(batch, length, -1) * torch.sigmoid(gate.reshape(batch, length, -1))
        return self.o_proj(out)
