"""What every layer of one forward step shares: positions, rotary tables, the causal mask.

Built once per forward from a positions tensor and a static key window length, so the step's
Python control flow depends only on shapes — a fixed-shape decode or verify step can be captured.
"""

from dataclasses import dataclass

import torch

from daemon.model.rope import rotary_tables


@dataclass(frozen=True)
class StepContext:
    positions: torch.Tensor  # [T] absolute positions of the new tokens
    kv_len: int  # keys visible to attention: cache slots [0, kv_len)
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor  # [T, kv_len] (or [B, 1, T, kv_len] with a key mask) bool, True where a query may attend
    keep_steps: bool  # record DeltaNet state after every new token
    # the keys end at the last query (the eager forms): a few query rows may attend one at a time, each
    # exactly as a 1-token decode step would (daemon/model/attention.py); fixed-shape steps read a whole
    # cache under a mask instead
    decode_rows: bool = False

    @classmethod
    def build(cls, positions: torch.Tensor, kv_len: int, inv_freq: torch.Tensor, dtype: torch.dtype,
              keep_steps: bool = False, key_mask: torch.Tensor | None = None,
              decode_rows: bool = False) -> "StepContext":
        """key_mask [B, >= kv_len] bool: False for cache slots no query of that row may see (left padding
        of a batch of prompts); a query still sees its own slot, so a padding row never has zero keys."""
        cos, sin = rotary_tables(positions, inv_freq, dtype)
        slots = torch.arange(kv_len, device=positions.device)
        mask = slots[None, :] <= positions[:, None]
        if key_mask is not None:
            mask = mask & (key_mask[:, None, None, :kv_len] | (slots[None, :] == positions[:, None]))
        return cls(positions, kv_len, cos, sin, mask, keep_steps, decode_rows)
