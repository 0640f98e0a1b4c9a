"""Partial rotary position embedding.

Qwen3.5/3.6 rotate only the first `rotary_dim` (64 of 256) dims of each head (Llama and Qwen3: all of
them). The Qwen3.5/3.6 checkpoints declare M-RoPE, but for text all three position streams are equal
and it reduces to this 1-D form. Angles are computed from a positions tensor on every call, so one
captured step serves every position. Frequencies and angles are float32 (as transformers computes
them) for float32 and narrower models, float64 for a float64 model.
"""

import math

import torch


def inverse_frequencies(rotary_dim: int, theta: float, device: torch.device | None = None,
                        llama3: tuple[float, float, float, float] | None = None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """llama3: (factor, low_freq_factor, high_freq_factor, original context) of Llama 3.1+'s scaled RoPE:
    wavelengths longer than original/low are slowed by `factor`, shorter than original/high kept, and
    those between interpolated."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=dtype, device=device) / rotary_dim
    inv_freq = 1.0 / (theta**exponents)
    if llama3 is None:
        return inv_freq
    factor, low, high, original = llama3
    wavelength = 2 * math.pi / inv_freq
    smooth = ((original / wavelength - low) / (high - low)).clamp(0.0, 1.0)
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


def model_inverse_frequencies(config, device: torch.device | None = None,
                              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return inverse_frequencies(config.rotary_dim, config.rope_theta, device, config.llama3_rope, dtype)


def rotary_tables(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    """cos and signed sin tables [T, rotary_dim] for the given absolute positions, computed at inv_freq's
    dtype: the sin table's first half negated, so `apply_rotary` rotates with one roll (-x2·s = x2·(-s)
    exactly: the same bits as negating the input's half)."""
    freqs = positions.to(inv_freq.dtype)[:, None] * inv_freq[None, :]
    sin = freqs.sin()
    return torch.cat((freqs, freqs), dim=-1).cos().to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the leading rotary dims of x [B, T, heads, head_dim] by rotary_tables' cos and signed sin
    (x·cos + [x2, x1]·[-s, s], as transformers' rotate_half spells it); the rest passes through. Four
    ops where the spelled-out form takes nine: a decode step of the demo rotates 60 times (measured
    29 µs -> 8 µs a layer for its q and k, 1 thread)."""
    rot = cos.shape[-1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    if rot == x.shape[-1]:
        return x * cos + x.roll(rot // 2, dims=-1) * sin
    x_rot = x[..., :rot]
    return torch.cat((x_rot * cos + x_rot.roll(rot // 2, dims=-1) * sin, x[..., rot:]), dim=-1)
