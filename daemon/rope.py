"""Partial rotary position embedding.

Qwen3.5/3.6 rotate only the first `rotary_dim` (64 of 256) dims of each head (Llama and Qwen3: all of
them). The Qwen3.5/3.6 checkpoints declare M-RoPE, but for text all three position streams are equal
and it reduces to this 1-D form. Angles are computed from a positions tensor on every call, so one
captured step serves every position.
"""

import torch


def inverse_frequencies(rotary_dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim
    return 1.0 / (theta**exponents)


def rotary_tables(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    """cos/sin tables [T, rotary_dim] for the given absolute positions."""
    freqs = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the leading rotary dims of x [B, T, heads, head_dim]; the rest passes through."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    half = rot // 2
    rotated_half = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    return torch.cat((x_rot * cos + rotated_half * sin, x_pass), dim=-1)
