"""Random inputs of the gated delta rule, and a candidate rule's errors against delta_rule.py's torch form:
one recipe for the tests of the rule's kernels (tests/test_kernels.py, tests/test_fused_delta_rule.py) and
for scripts/device_check.py, which checks the same kernels on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from daemon.model.delta_rule import recurrent_delta_rule


def delta_rule_inputs(length: int, heads: int, k_dim: int, v_dim: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu", batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(q, k, v, g, beta, state) laid out as GatedDeltaNet hands them over: q, k, v transposed views of
    [B, T, H, D] tensors (q and k L2-normalised, q scaled), g and beta transposed views of [B, T, H], the
    state [B, H, Dk, Dv] a slice of a larger tensor, as a cache's is."""
    gen = torch.Generator(device).manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype, device=device)  # noqa: E731
    q, k = (F.normalize(rand(batch, length, heads, k_dim), dim=-1).transpose(1, 2) for _ in range(2))
    v = rand(batch, length, heads, v_dim).transpose(1, 2)
    g = -F.softplus(rand(batch, length, heads)).transpose(1, 2)
    beta = torch.sigmoid(rand(batch, length, heads)).transpose(1, 2)
    return q * k_dim**-0.5, k, v, g, beta, rand(batch + 1, heads, k_dim, v_dim)[1:]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest difference relative to the largest magnitude of `expected`."""
    return float((actual - expected).abs().max() / expected.abs().max())


def errors_against_torch(rule: Callable, inputs: tuple[torch.Tensor, ...], keep_steps: bool, slots: int = 5) -> dict:
    """`rule` (recurrent_delta_rule's contract) against recurrent_delta_rule, each on its own copy of `inputs`'
    state and of `slots` zeroed per-token state slots (passed only with `keep_steps`): relative errors of the
    outputs, the final state and the per-token states (None without), whether the outputs' shape and dtype
    match, and whether the slots past the step's tokens are left as they were."""
    *rows, state = inputs
    length = rows[0].shape[2]
    steps = torch.zeros(slots, *state.shape, dtype=state.dtype, device=state.device)
    torch_state, torch_steps = state.clone(), steps.clone()
    expected = recurrent_delta_rule(*rows, torch_state, torch_steps)
    rule_state, rule_steps = state.clone(), steps.clone()
    out = rule(*rows, rule_state, rule_steps if keep_steps else None)
    written = length if keep_steps else 0
    return {"out": relative_error(out, expected), "state": relative_error(rule_state, torch_state),
            "steps": relative_error(rule_steps[:length], torch_steps[:length]) if keep_steps else None,
            "shape_and_dtype_match": out.shape == expected.shape and out.dtype == expected.dtype,
            "other_slots_untouched": torch.equal(rule_steps[written:], steps[written:])}
