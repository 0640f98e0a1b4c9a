"""One case of tests/test_fused_delta_rule.py, run in a process of its own: Triton reads TRITON_INTERPRET
when it is first imported, and the suite's process may have imported it already (torch does, looking for
GPU backends). Prints the kernel's errors against delta_rule.py's torch form, relative to its scale, as JSON.

    TRITON_INTERPRET=1 python -m tests.fused_delta_rule_case LENGTH HEADS K_DIM V_DIM DTYPE
    TRITON_INTERPRET=1 python -m tests.fused_delta_rule_case --model CHECKPOINT
"""

import json
import sys

import torch

from daemon.tools.delta_rule_check import delta_rule_inputs, errors_against_torch


def main(length: int, heads: int, k_dim: int, v_dim: int, dtype: str) -> dict:
    from daemon.model.fused_delta_rule import fused_recurrent_delta_rule  # imports triton: in this process only

    inputs = delta_rule_inputs(length, heads, k_dim, v_dim, getattr(torch, dtype), batch=2, seed=length)
    return {f"keep={keep}": errors_against_torch(fused_recurrent_delta_rule, inputs, keep) for keep in (True, False)}


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
