"""CUDA kernels for the Gated DeltaNet when they are installed, the plain torch path otherwise.

flash-linear-attention (`fla`) fuses the gated delta rule (a recurrent kernel for a few tokens, a
chunked one for prefill) and causal-conv1d the depthwise conv's decode update. Both are CUDA only
and optional: the torch path in delta_rule.py / deltanet.py is the reference and runs everywhere.
Neither kernel records the state after every token, so a verify step (`keep_steps`) never takes them;
they serve prefill and plain decode. This project's own Triton kernel (fused_delta_rule.py) does record
the states: on CUDA, where triton imports, it serves every verify step and, without fla, plain decode
(`MTPCHAT_FUSED_DELTA_RULE=0` turns it off; inside torch.compile the torch path is traced instead, which
inductor fuses itself). tests/test_kernels.py compares fla and causal-conv1d with the torch path
wherever they import, tests/test_fused_delta_rule.py the Triton kernel under Triton's interpreter;
`device_check` reports which ran.
"""

import os
import sys

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


_fused = {}  # "rule": fused_delta_rule's function once imported, None where it cannot be or has failed


def _fused_rule():
    if "rule" not in _fused:
        try:
            from daemon.model.fused_delta_rule import fused_recurrent_delta_rule
        except ImportError:  # no triton
            fused_recurrent_delta_rule = None
        _fused["rule"] = fused_recurrent_delta_rule
    return _fused["rule"]


def has_fused_recurrent(x: torch.Tensor) -> bool:
    """Whether the recurrent rule runs as this project's Triton kernel for x's step: on CUDA, eagerly (and
    so when captured), triton importable, not turned off, not failed before."""
    return (x.is_cuda and not torch.compiler.is_compiling() and os.environ.get("MTPCHAT_FUSED_DELTA_RULE") != "0"
            and _fused_rule() is not None)


def recurrent(q, k, v, g, beta, state, state_steps=None):
    """delta_rule.recurrent_delta_rule's contract, by the Triton kernel where `has_fused_recurrent`. A kernel
    that fails (a triton the kernel was not written for) is reported once and the torch rule used from then on."""
    if has_fused_recurrent(q):
        try:
            return _fused["rule"](q, k, v, g, beta, state, state_steps)
        except Exception as exc:  # the kernel's compile or launch; nothing was written before either
            print(f"mtpchatd: the fused delta-rule kernel failed ({type(exc).__name__}: {exc}); DeltaNet layers "
                  "use the torch rule", file=sys.stderr)
            _fused["rule"] = None
    return recurrent_delta_rule(q, k, v, g, beta, state, state_steps)


def delta_rule(q, k, v, g, beta, state, state_steps=None):
    """The gated delta rule (delta_rule.py's contract: heads before time, `state` updated in place; with
    `state_steps`, S after token t written to state_steps[t], as a verify step needs): fla's kernels for a
    plain step or prefill where they import and the inputs are on CUDA, else `recurrent` for up to
    RECURRENT_MAX_TOKENS tokens (always with state_steps) and the chunked torch rule beyond."""
    short = q.shape[2] <= RECURRENT_MAX_TOKENS
    if state_steps is not None or short and not has_delta_rule_kernel(q):
        return recurrent(q, k, v, g, beta, state, state_steps)
    if not has_delta_rule_kernel(q):
        return chunked_delta_rule(q, k, v, g, beta, state)
    kernel = fused_recurrent_gated_delta_rule if short else chunk_gated_delta_rule
    q, k, v, g, beta = (t.transpose(1, 2).contiguous() for t in (q, k, v, g, beta))  # fla: time before heads
    out, final = kernel(q, k, v, g=g, beta=beta, scale=1.0, initial_state=state, output_final_state=True)
    state.copy_(final)
    return out.transpose(1, 2)


def conv_update(mixed: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """silu(depthwise causal conv) of mixed [B, D, T] continuing from conv_state [B, D, kernel-1] (updated
    in place), by causal-conv1d's kernel; weight [D, kernel]. Callers check `has_conv_kernel` first."""
    return causal_conv1d_update(mixed.to(conv_state.dtype), conv_state, weight, None, "silu")
