"""The CUDA kernels (flash-linear-attention, causal-conv1d) equal the torch path they replace.

Skipped where they do not import or there is no CUDA device: both are CUDA-only packages, so a CPU
machine cannot run them. Tolerance: inputs and state are float32; the kernels sum in a different
order (tiles, chunked solves) and may use TF32 tensor cores (10-bit mantissa, ~1e-3 relative) in the
chunked rule; 2e-3 of the output's scale passes that and fails a wrong decay, gate or state (O(1)).
"""

import pytest
import torch
from torch.nn import functional as F

from daemon.model import kernels
from daemon.model.delta_rule import chunked_delta_rule, recurrent_delta_rule
from daemon.tools.delta_rule_check import delta_rule_inputs, relative_error

RTOL = 2e-3
cuda = torch.cuda.is_available()


def _inputs(length: int, heads=4, k_dim=16, v_dim=32):
    return delta_rule_inputs(length, heads, k_dim, v_dim, device="cuda")


def _close(actual, expected):
    assert relative_error(actual, expected) <= RTOL


@pytest.mark.skipif(not (cuda and kernels.chunk_gated_delta_rule),
                    reason="flash-linear-attention is CUDA-only and not installed")
@pytest.mark.parametrize("length", [1, 4, 200])
def test_fla_delta_rule_equals_torch(length):
    q, k, v, g, beta, state = _inputs(length)
    kernel_state, torch_state = state.clone(), state.clone()
    out = kernels.delta_rule(q, k, v, g, beta, kernel_state)
    rule = recurrent_delta_rule if length <= kernels.RECURRENT_MAX_TOKENS else chunked_delta_rule
    expected = rule(q, k, v, g, beta, torch_state)
    _close(out, expected)
    _close(kernel_state, torch_state)


@pytest.mark.skipif(not (cuda and kernels.causal_conv1d_update), reason="causal-conv1d is CUDA-only and not installed")
@pytest.mark.parametrize("length", [1, 4])
def test_conv_update_equals_torch(length):
    gen = torch.Generator("cuda").manual_seed(1)
    mixed = torch.randn(1, 64, length, device="cuda", generator=gen)
    state = torch.randn(1, 64, 3, device="cuda", generator=gen)
    weight = torch.randn(64, 4, device="cuda", generator=gen)
    window = torch.cat((state, mixed), dim=-1)
    expected = F.silu(F.conv1d(window, weight[:, None, :], groups=64))
    kernel_state = state.clone()
    _close(kernels.conv_update(mixed, kernel_state, weight), expected)
    _close(kernel_state, window[:, :, -3:])
