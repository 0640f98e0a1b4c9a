"""CUDA kernels for the Gated DeltaNet when they are installed, the plain torch path otherwise.

flash-linear-attention (`fla`) fuses the gated delta rule (a recurrent kernel for a few tokens, a
chunked one for prefill) and causal-conv1d the depthwise conv's decode update. Both are CUDA only
and optional: the torch path in delta_rule.py / deltanet.py is the reference and runs everywhere.
Neither kernel records the state after every token, so a verify step (`keep_steps`) always takes
the torch path; these serve prefill and plain decode. tests/test_kernels.py compares them with the
torch path wherever they import; `device_check` reports whether they did.
"""

import torch

from daemon.model.delta_rule import chunked_delta_rule, recurrent_delta_rule

try:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
except ImportError:
    chunk_gated_delta_rule = fused_recurrent_gated_delta_rule = None
try:
    from causal_conv1d import causal_conv1d_update
except ImportError:
    causal_conv1d_update = None

# Inputs up to this length take the recurrent rule: fewer kernels than a padded 64-token chunk.
RECURRENT_MAX_TOKENS = 8


def has_delta_rule_kernel(x: torch.Tensor) -> bool:
    return x.is_cuda and chunk_gated_delta_rule is not None


def has_conv_kernel(x: torch.Tensor) -> bool:
    return x.is_cuda and causal_conv1d_update is not None


def delta_rule(q, k, v, g, beta, state):
    """The gated delta rule without per-token states (delta_rule.py's contract: heads before time,
    `state` updated in place), by fla's kernels when they import and the inputs are on CUDA."""
    short = q.shape[2] <= RECURRENT_MAX_TOKENS
    if not has_delta_rule_kernel(q):
        rule = recurrent_delta_rule if short else chunked_delta_rule
        return rule(q, k, v, g, beta, state)
    kernel = fused_recurrent_gated_delta_rule if short else chunk_gated_delta_rule
    q, k, v, g, beta = (t.transpose(1, 2).contiguous() for t in (q, k, v, g, beta))  # fla: time before heads
    out, final = kernel(q, k, v, g=g, beta=beta, scale=1.0, initial_state=state, output_final_state=True)
    state.copy_(final)
    return out.transpose(1, 2)


def conv_update(mixed: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """silu(depthwise causal conv) of mixed [B, D, T] continuing from conv_state [B, D, kernel-1] (updated
    in place), by causal-conv1d's kernel; weight [D, kernel]. Callers check `has_conv_kernel` first."""
    return causal_conv1d_update(mixed.to(conv_state.dtype), conv_state, weight, None, "silu")
