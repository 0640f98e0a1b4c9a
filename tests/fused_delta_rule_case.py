"""One case of tests/test_fused_delta_rule.py, run in a process of its own: Triton reads TRITON_INTERPRET
when it is first imported, and the suite's process may have imported it already (torch does, looking for
GPU backends). Prints the kernel's errors against delta_rule.py's torch form, relative to its scale, as JSON.

    TRITON_INTERPRET=1 python -m tests.fused_delta_rule_case LENGTH HEADS K_DIM V_DIM DTYPE
    TRITON_INTERPRET=1 python -m tests.fused_delta_rule_case --model CHECKPOINT
"""

import json
import sys

import torch
from torch.nn import functional as F

from daemon.model.delta_rule import recurrent_delta_rule


def inputs(length: int, heads: int, k_dim: int, v_dim: int, dtype: torch.dtype, batch: int = 2, slots: int = 5):
    """Laid out as GatedDeltaNet hands them over: q, k, v transposed views of [B, T, H, D] tensors, g and
    beta of [B, T, H]; the state a slice of a larger cache tensor."""
    gen = torch.Generator().manual_seed(length * 1000 + k_dim + v_dim)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    q, k = (F.normalize(rand(batch, length, heads, k_dim), dim=-1).transpose(1, 2) for _ in range(2))
    v = rand(batch, length, heads, v_dim).transpose(1, 2)
    g = -F.softplus(rand(batch, length, heads)).transpose(1, 2)
    beta = torch.sigmoid(rand(batch, length, heads)).transpose(1, 2)
    cache = rand(batch + 1, heads, k_dim, v_dim)
    steps = torch.zeros(slots, batch, heads, k_dim, v_dim, dtype=dtype)
    return q * k_dim**-0.5, k, v, g, beta, cache[1:], steps


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def main(length: int, heads: int, k_dim: int, v_dim: int, dtype: str) -> dict:
    from daemon.model.fused_delta_rule import fused_recurrent_delta_rule  # imports triton: in this process only

    q, k, v, g, beta, state, steps = inputs(length, heads, k_dim, v_dim, getattr(torch, dtype))
    torch_state, torch_steps = state.clone(), steps.clone()
    expected = recurrent_delta_rule(q, k, v, g, beta, torch_state, torch_steps)
    report = {}
    for keep in (True, False):
        kernel_state, kernel_steps = state.clone(), steps.clone()
        out = fused_recurrent_delta_rule(q, k, v, g, beta, kernel_state, kernel_steps if keep else None)
        report[f"keep={keep}"] = {
            "shape_and_dtype_match": out.shape == expected.shape and out.dtype == expected.dtype,
            "out": relative(out, expected), "state": relative(kernel_state, torch_state),
            "steps": relative(kernel_steps[:length], torch_steps[:length]) if keep else None,
            "other_slots_untouched": torch.equal(kernel_steps[length:] if keep else kernel_steps,
                                                 steps[length:] if keep else steps)}
    return report


def decoded_with_and_without(checkpoint: str) -> dict:
    """A tiny Qwen3.6 checkpoint in float64 decoding plain and with MTP (k = 3: 4-token verify steps that
    record and roll back the DeltaNet state), its layers' recurrent rule on the kernel (forced onto the
    CPU, which the interpreter runs) and on torch: the tokens of each."""
    from daemon.model import kernels
    from daemon.model.fused_delta_rule import fused_recurrent_delta_rule
    from daemon.weights.loader import load_model
    from tests.helpers import decode, random_ids

    model = load_model(checkpoint, dtype=torch.float64)
    prompt = random_ids(12, seed=3)[0].tolist()
    tokens = {}
    for rule in ("fused", "torch"):
        kernels.has_fused_recurrent = lambda x, fused=rule == "fused": fused
        calls = []
        kernels._fused["rule"] = lambda *args, calls=calls: calls.append(1) or fused_recurrent_delta_rule(*args)
        for k in (0, 3):
            tokens[f"{rule} k={k}"] = decode(model, prompt, 24, draft_k=k)
        tokens[f"{rule} kernel calls"] = len(calls)
    return tokens


if __name__ == "__main__":
    if sys.argv[1] == "--model":
        print(json.dumps(decoded_with_and_without(sys.argv[2])))
    else:
        *sizes, dtype = sys.argv[1:]
        print(json.dumps(main(*map(int, sizes), dtype)))
