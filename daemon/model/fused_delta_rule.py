"""The recurrent gated delta rule as one Triton kernel: a decode or verify step of a DeltaNet layer in a
single launch instead of about a dozen torch kernels per token.

On a GPU without flash-linear-attention, delta_rule.py's recurrent form is what a decode step (1 token)
and a verify step (k+1 tokens, recording the state after each) run: per token it decays the state, reads
it with k, writes the correction, reads it with q — each a kernel over the whole [k_dim, v_dim] state of
every head, about 12 launches a token, ~50 for a k = 3 verify, in each of the 48 DeltaNet layers of the
27B shape. Captured in a CUDA graph those launches are still the cost the H200 run measured (verify k = 3
at 1.34× a decode step, README "Measured on a GPU"). Here one program holds a [k_dim, BV] slice of one
head's state in registers for all the step's tokens and writes the outputs, the per-token states
(`state_steps`, for rollback) and the final state. The maths is delta_rule.py's, in the state's dtype;
only the order of the sums differs, so results agree to rounding (float64 in the tests).

The kernel runs on CUDA, and on the CPU under Triton's interpreter (TRITON_INTERPRET=1), which is how
tests/test_fused_delta_rule.py checks it against the torch form on any machine with triton installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK_V = 32  # state columns per program: [k_dim, 32] fp32 is 32 registers a thread at 4 warps for k_dim 128


@triton.jit
def _recurrent_kernel(q, k, v, g, beta, state, steps, out, T, H, DK, DV,
                      sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sg_b, sg_h, sg_t, sb_b, sb_h, sb_t,
                      ss_b, ss_h, ss_k, st_t, st_b, st_h, st_k, so_b, so_t, so_h,
                      BK: tl.constexpr, BV: tl.constexpr, KEEP_STEPS: tl.constexpr):
    block_v, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    rows = tl.arange(0, BK)
    cols = block_v * BV + tl.arange(0, BV)
    row_ok, col_ok = rows < DK, cols < DV
    tile_ok = row_ok[:, None] & col_ok[None, :]
    tile = rows[:, None] * ss_k + cols[None, :]
    s = tl.load(state + b * ss_b + h * ss_h + tile, mask=tile_ok, other=0.0)
    for t in range(T):
        k_t = tl.load(k + b * sk_b + h * sk_h + t * sk_t + rows, mask=row_ok, other=0.0).to(s.dtype)
        q_t = tl.load(q + b * sq_b + h * sq_h + t * sq_t + rows, mask=row_ok, other=0.0).to(s.dtype)
        v_t = tl.load(v + b * sv_b + h * sv_h + t * sv_t + cols, mask=col_ok, other=0.0).to(s.dtype)
        g_t = tl.load(g + b * sg_b + h * sg_h + t * sg_t).to(s.dtype)
        beta_t = tl.load(beta + b * sb_b + h * sb_h + t * sb_t).to(s.dtype)
        s = s * tl.exp(g_t)
        read = tl.sum(s * k_t[:, None], axis=0)
        s = s + k_t[:, None] * ((v_t - read) * beta_t)[None, :]
        out_t = tl.sum(s * q_t[:, None], axis=0)
        tl.store(out + b * so_b + t * so_t + h * so_h + cols, out_t, mask=col_ok)
        if KEEP_STEPS:
            tl.store(steps + t * st_t + b * st_b + h * st_h + rows[:, None] * st_k + cols[None, :], s, mask=tile_ok)
    tl.store(state + b * ss_b + h * ss_h + tile, s, mask=tile_ok)


def fused_recurrent_delta_rule(q, k, v, g, beta, state, state_steps=None):
    """delta_rule.recurrent_delta_rule's contract (q, k [B, H, T, Dk], v [B, H, T, Dv], g, beta [B, H, T],
    `state` [B, H, Dk, Dv] updated in place, S after token t to state_steps[t]) in one kernel launch.
    Returns [B, H, T, Dv] in the state's dtype (a view of a [B, T, H, Dv] tensor: what the layer wants next)."""
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    batch, heads, length, k_dim = q.shape
    v_dim = v.shape[-1]
    assert state.stride(-1) == 1 and (state_steps is None or state_steps.stride(-1) == 1)
    out = torch.empty(batch, length, heads, v_dim, dtype=state.dtype, device=state.device)
    block_v = min(MAX_BLOCK_V, triton.next_power_of_2(v_dim))
    keep_steps = state_steps is not None
    # without slots the kernel writes none: any pointer will do
    steps, step_strides = (state_steps, state_steps.stride()[:4]) if keep_steps else (state, (0, 0, 0, 0))
    grid = (triton.cdiv(v_dim, block_v), batch * heads)
    _recurrent_kernel[grid](
        q, k, v, g, beta, state, steps, out, length, heads, k_dim, v_dim,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *g.stride(), *beta.stride(), *state.stride()[:3],
        *step_strides,
        out.stride(0), out.stride(1), out.stride(2),
        BK=triton.next_power_of_2(k_dim), BV=block_v, KEEP_STEPS=keep_steps)
    return out.transpose(1, 2)
