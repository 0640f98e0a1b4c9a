"""Full attention with RoPE over a position-indexed KV cache: Qwen3.5/3.6's gated kind and the plain kind.

The checkpoint's q_proj, k_proj and v_proj are stacked into one qkv_proj (one weight read, one kernel
call per step instead of three; `stacks` tells the loader the rows of each).
Qwen3.5/3.6 (every 4th trunk layer and the MTP layer): q_proj emits [query | gate] per head; q and k
get a per-head zero-centred RMSNorm and partial RoPE; the output is scaled by sigmoid(gate) before
o_proj. Llama: no gate, no q/k norm, RoPE over the whole head. Qwen3: Llama plus plain q/k norms.
Keys/values go to the layer's cache, and queries attend over the first `kv_len` slots under a causal mask.

The few query rows of a verify step (2..ROW_BY_ROW tokens, one sequence) attend one row at a time,
each exactly as the 1-token decode step at its position would (same shapes, same kernel): so every
verified position gets the bits plain decoding gets there. One multi-row attention call is as right
but rounds differently, and where the weights are quantized the layers' bfloat16 inputs turn that
last-bit difference into a visible one (daemon/model/quantized.py): MTP decoding would then leave
plain decoding's tokens at near-ties. The per-row calls cost a few small kernels per layer. A row
sees every key up to its own, so these calls take no mask (SDPA turns a boolean mask into a float one
first: 18.8 -> 15.1 µs a call without it, the demo's decode row, 1 thread).

On the CPU in float32 outside autograd, once the loader has loaded this project's kernels, those rows
take one call instead (decode_attention.cpp): it rotates each row's query and key, stores key and value
in the cache and attends, each row as a 1-row call at its position would, so the property above holds.
It replaces a layer's rotation, cache writes, transposes and SDPA calls: 13.8 µs against SDPA's 21.2 for
one demo decode row over 151 keys, 54 against 72 over 1001 (2 threads); the demo's int4 decode step
went 15.0-16.5 -> 13.2-14.2 ms at 1 thread and 10.9-11.3 -> 8.7-9.0 ms at 2 against the code before
this kernel (median of 64 steps, 2 rounds alternating, Sapphire Rapids).
"""

import torch
from torch import nn
from torch.nn import functional as F

from daemon.model import cpu_kernels
from daemon.model.cache import AttentionCache
from daemon.model.config import TextConfig
from daemon.model.linear import Linear
from daemon.model.norms import rms_norm
from daemon.model.rope import apply_rotary
from daemon.model.step_context import StepContext

ROW_BY_ROW = 8  # query rows up to which attention runs row by row, as decode steps do (see above)


def by_rows(x: torch.Tensor, ctx: StepContext) -> bool:
    """Whether the query rows of x [B, T, hidden] attend one at a time (see above): a few rows of one
    sequence whose keys end at the last of them."""
    return ctx.decode_rows and x.shape[1] <= ROW_BY_ROW and x.shape[0] == 1 and ctx.mask.dim() == 2


class Attention(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.gated = config.gated_attention
        hidden = config.hidden_size
        kv_rows = self.num_kv_heads * self.head_dim
        self.rows = (self.num_heads * self.head_dim * (2 if self.gated else 1), kv_rows, kv_rows)
        self.qkv_proj = Linear(hidden, sum(self.rows))
        self.o_proj = Linear(self.num_heads * self.head_dim, hidden)
        if config.qk_norm:
            self.q_norm = rms_norm(config, self.head_dim)
            self.k_norm = rms_norm(config, self.head_dim)
        else:
            self.q_norm = self.k_norm = None

    @property
    def stacks(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """qkv_proj stacks the checkpoint's q_proj, k_proj and v_proj (their rows, in order)."""
        return {"qkv_proj": tuple(zip(("q_proj", "k_proj", "v_proj"), self.rows))}

    def forward(self, x: torch.Tensor, cache: AttentionCache, ctx: StepContext) -> torch.Tensor:
        batch, length, _ = x.shape
        qkv = self.qkv_proj(x)
        query, key, value = qkv.split(self.rows, dim=-1)
        query = query.view(batch, length, self.num_heads, -1)
        gate = None
        if self.gated:
            query, gate = query.chunk(2, dim=-1)
        key = key.view(batch, length, self.num_kv_heads, self.head_dim)
        value = value.view(batch, length, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            query, key = self.q_norm(query), self.k_norm(key)
        cache.reserve(ctx.kv_len)
        if self.kernel_rows(query, cache, ctx):
            out = torch.ops.mtpchat_cpu.attend_rows(query, key, value, ctx.cos, ctx.sin, cache.keys, cache.values,
                                                    ctx.kv_len - length)
        else:
            out = self._rotate_and_attend(qkv, query, key, value, cache, ctx, by_rows(x, ctx))
        if gate is not None:
            out = out * torch.sigmoid(gate.reshape(batch, length, -1))
        return self.o_proj(out)

    def kernel_rows(self, x: torch.Tensor, cache: AttentionCache, ctx: StepContext) -> bool:
        """Whether decode_attention.cpp serves this step's rows (x [B, T, ...]: the layer's input or its
        queries): rows attended one at a time, float32 on the CPU, outside autograd, once the loader has
        loaded the kernels (daemon/model/cpu_kernels.py)."""
        return (by_rows(x, ctx) and cpu_kernels.LOADED and x.dtype == cache.keys.dtype == torch.float32
                and x.is_cpu and self.head_dim % 16 == 0 and not torch.is_grad_enabled())

    def _rotate_and_attend(self, qkv, query, key, value, cache, ctx, by_rows: bool) -> torch.Tensor:
        batch, length = qkv.shape[:2]
        if self.gated or self.q_norm is not None:
            query, key = apply_rotary(query, ctx.cos, ctx.sin), apply_rotary(key, ctx.cos, ctx.sin)
        else:  # Llama: q and k sit side by side in qkv_proj's output, heads of one width: one rotation
            query_key = qkv[..., :self.rows[0] + self.rows[1]].view(batch, length, -1, self.head_dim)
            query, key = apply_rotary(query_key, ctx.cos, ctx.sin).split((self.num_heads, self.num_kv_heads), dim=2)
        cache.write(ctx.positions, key, value)
        keys, values = cache.window(ctx.kv_len)
        queries, keys, values = query.transpose(1, 2), keys.to(query.dtype), values.to(query.dtype)
        if by_rows:
            first = ctx.kv_len - length  # keys row i sees: [0, first + i], all of them, so no mask
            rows = [self._attend(queries[:, :, i:i + 1].contiguous(), keys[:, :, :first + i + 1],
                                 values[:, :, :first + i + 1]) for i in range(length)]
            out = rows[0] if length == 1 else torch.cat(rows, dim=2)
        else:
            out = self._attend(queries, keys, values, ctx.mask)
        return out.transpose(1, 2).reshape(batch, length, -1)

    def _attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask,
                                              enable_gqa=self.num_heads != self.num_kv_heads)
