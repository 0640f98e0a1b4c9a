"""What every layer of one forward step shares: positions, rotary tables, the causal mask.

Built once per forward from a positions tensor and a static key window length, so the step's
Python control flow depends only on shapes — a fixed-shape decode or verify step can be captured.
"""

from dataclasses import dataclass

import torch

from daemon.rope import rotary_tables


@dataclass(frozen=True)
class StepContext:
    positions: torch.Tensor  # [T] absolute positions of the new tokens
    kv_len: int  # keys visible to attention: cache slots [0, kv_len)
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor  # [T, kv_len] bool, True where a query may attend
    keep_steps: bool  # record DeltaNet state after every new token

    @classmethod
    def build(cls, positions: torch.Tensor, kv_len: int, inv_freq: torch.Tensor, dtype: torch.dtype,
              keep_steps: bool = False) -> "StepContext":
        cos, sin = rotary_tables(positions, inv_freq, dtype)
        slots = torch.arange(kv_len, device=positions.device)
        mask = slots[None, :] <= positions[:, None]
        return cls(positions, kv_len, cos, sin, mask, keep_steps)
