"""Preallocated inference state for one sequence batch: the only memory a forward writes.

Full-attention layers keep keys/values in buffers written by position, so rolling back after a
rejected draft is just not advancing the position (gpt-fast's trick). A buffer may start smaller than
`max_len` and doubles (up to `max_len`) when a forward reaches its end: a stream that asks for a
long reply but stops early never holds memory for the whole context. Gated
DeltaNet layers keep a conv window and a recurrent state (float32, or float64 for a float64 model:
`accumulation_dtype`) that cannot be rolled back by position; a multi-token forward can therefore
also record the state after each of its tokens in `max_steps` slots, and `restore_step` continues
from any of them without replaying anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from daemon.model.config import TextConfig
from daemon.model.precision import accumulation_dtype


def _tensors(cache) -> list[torch.Tensor]:
    return [t for t in vars(cache).values() if isinstance(t, torch.Tensor)]


def _nbytes(cache) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(cache))


def _zero(cache) -> None:
    for tensor in _tensors(cache):
        tensor.zero_()


@dataclass
class AttentionCache:
    keys: torch.Tensor  # [B, kv_heads, allocated positions, head_dim]
    values: torch.Tensor
    max_len: int  # the most positions it may grow to

    @classmethod
    def allocate(cls, batch, kv_heads, max_len, head_dim, device, dtype, initial_len=None) -> AttentionCache:
        shape = (batch, kv_heads, min(initial_len or max_len, max_len), head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype),
                   max_len)

    def is_full(self) -> bool:
        """Whether it already holds all `max_len` positions (what fixed-shape steps need)."""
        return self.keys.shape[2] == self.max_len

    def reserve(self, length: int) -> None:
        """Make positions [0, length) writable: grow to twice the size (at least `length`, at most max_len)."""
        allocated = self.keys.shape[2]
        if length <= allocated:
            return
        if length > self.max_len:
            raise ValueError(f"position {length - 1} is past this cache's {self.max_len} positions")
        size = min(max(length, 2 * allocated), self.max_len)

        def grown(t: torch.Tensor) -> torch.Tensor:
            extra = t.new_zeros((*t.shape[:2], size - allocated, t.shape[3]))
            return torch.cat((t, extra), dim=2)

        self.keys, self.values = grown(self.keys), grown(self.values)

    def write(self, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store keys/values [B, T, kv_heads, head_dim] at absolute positions [T]."""
        self.keys.index_copy_(2, positions, keys.transpose(1, 2).to(self.keys.dtype))
        self.values.index_copy_(2, positions, values.transpose(1, 2).to(self.values.dtype))

    def window(self, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[:, :, :kv_len], self.values[:, :, :kv_len]

    def capture(self, length: int) -> tuple[torch.Tensor, ...]:
        """A copy of positions [0, length), for `restore` into a cache of any capacity ≥ length."""
        return self.keys[:, :, :length].clone(), self.values[:, :, :length].clone()

    def restore(self, captured: tuple[torch.Tensor, ...]) -> None:
        keys, values = captured
        self.reserve(keys.shape[2])
        self.keys[:, :, :keys.shape[2]].copy_(keys)
        self.values[:, :, :values.shape[2]].copy_(values)

    def nbytes(self) -> int:
        return _nbytes(self)

    def zero_(self) -> None:
        _zero(self)


@dataclass
class DeltaNetCache:
    conv: torch.Tensor  # [B, conv_dim, kernel - 1]: the last inputs of the causal conv
    state: torch.Tensor  # [B, v_heads, k_dim, v_dim], at accumulation_dtype(dtype)
    conv_steps: torch.Tensor  # [max_steps, *conv.shape]: conv window after each token of a step
    state_steps: torch.Tensor  # [max_steps, *state.shape]

    @property
    def max_steps(self) -> int:
        return self.state_steps.shape[0]

    def restore_step(self, step: int | torch.Tensor) -> None:
        """Continue from the state recorded after token `step` of the last multi-token forward; `step`
        may be a device tensor [1] (a captured step's rollback: no host synchronisation)."""
        if isinstance(step, torch.Tensor):
            self.conv.copy_(self.conv_steps.index_select(0, step)[0])
            self.state.copy_(self.state_steps.index_select(0, step)[0])
        else:
            self.conv.copy_(self.conv_steps[step])
            self.state.copy_(self.state_steps[step])

    def capture(self, length: int) -> tuple[torch.Tensor, ...]:
        """A copy of the state after the last token in the cache (`length` is implied by it)."""
        return self.conv.clone(), self.state.clone()

    def restore(self, captured: tuple[torch.Tensor, ...]) -> None:
        conv, state = captured
        self.conv.copy_(conv)
        self.state.copy_(state)

    def nbytes(self) -> int:
        return _nbytes(self)

    def zero_(self) -> None:
        _zero(self)


class ModelCache:
    """Per-layer caches of the trunk, in layer order, each on its layer's device (`device` may be one
    device for all, or a list with one per layer)."""

    def __init__(self, config: TextConfig, max_len: int, *, batch: int = 1, max_steps: int = 0,
                 device: torch.device | str | list = "cpu", dtype: torch.dtype = torch.float32,
                 initial_len: int | None = None):
        devices = device if isinstance(device, list) else [device] * len(config.layer_types)
        self.capacity = max_len
        self.layers: list[AttentionCache | DeltaNetCache] = []
        conv_dim = 2 * config.linear_num_key_heads * config.linear_key_head_dim + (
            config.linear_num_value_heads * config.linear_value_head_dim
        )
        conv_shape = (batch, conv_dim, config.linear_conv_kernel_dim - 1)
        state_shape = (batch, config.linear_num_value_heads, config.linear_key_head_dim,
                       config.linear_value_head_dim)
        state_dtype = accumulation_dtype(dtype)
        for layer_type, device in zip(config.layer_types, devices, strict=True):
            if layer_type == "full_attention":
                self.layers.append(AttentionCache.allocate(
                    batch, config.num_key_value_heads, max_len, config.head_dim, device, dtype, initial_len))
            else:
                self.layers.append(DeltaNetCache(
                    conv=torch.zeros(conv_shape, device=device, dtype=dtype),
                    state=torch.zeros(state_shape, device=device, dtype=state_dtype),
                    conv_steps=torch.zeros((max_steps, *conv_shape), device=device, dtype=dtype),
                    state_steps=torch.zeros((max_steps, *state_shape), device=device, dtype=state_dtype),
                ))

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def zero_(self) -> None:
        for layer in self.layers:
            layer.zero_()

    def capture(self, length: int) -> list[tuple[torch.Tensor, ...]]:
        """Every layer's state for the first `length` positions (the cache must hold exactly those)."""
        return [layer.capture(length) for layer in self.layers]

    def restore(self, captured: list[tuple[torch.Tensor, ...]]) -> None:
        for layer, state in zip(self.layers, captured, strict=True):
            layer.restore(state)

    def reserve(self, length: int) -> None:
        """Make positions [0, length) writable in every attention layer (see AttentionCache.reserve)."""
        for layer in self.layers:
            if isinstance(layer, AttentionCache):
                layer.reserve(length)

    def is_full(self) -> bool:
        """Whether every attention buffer already holds `capacity` positions (what fixed shapes need)."""
        return all(layer.is_full() for layer in self.layers if isinstance(layer, AttentionCache))

    def restore_step(self, step: int | torch.Tensor) -> None:
        for layer in self.layers:
            if isinstance(layer, DeltaNetCache):
                layer.restore_step(step)
