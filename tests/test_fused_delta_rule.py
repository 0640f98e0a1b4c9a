"""The one-kernel recurrent delta rule (daemon/model/fused_delta_rule.py) equals delta_rule.py's torch form,
run by Triton's interpreter on the CPU (on a GPU the device check runs it compiled), each case in a process
of its own (tests/fused_delta_rule_case.py says why).

Tolerances: in float64 the two differ only in the order of their sums, so 1e-12 of the outputs' and
states' scale (~4000 ulps for k_dim ≤ 128 terms) passes them and fails a wrong decay, gate, stride or mask,
whose errors are O(1); float32 likewise at 1e-5 (~100 ulps).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}


def _case(*args) -> dict:
    pytest.importorskip("triton", reason="triton is a dev dependency on Linux x86_64 (pyproject.toml)")
    done = subprocess.run([sys.executable, "-m", "tests.fused_delta_rule_case", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env=dict(os.environ, TRITON_INTERPRET="1"))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("length, heads, k_dim, v_dim, dtype", [
    (1, 4, 16, 16, "float64"),    # the tiny checkpoints' plain decode step
    (4, 4, 16, 16, "float64"),    # a k = 3 verify
    (5, 3, 128, 128, "float64"),  # Qwen3.6's head dims: four column blocks of 32 per head
    (3, 2, 24, 40, "float64"),    # neither a power of two: masked rows and a partial column block
    (2, 2, 16, 16, "float32"),    # a bf16/fp32 model's state
])
def test_the_fused_kernel_equals_the_torch_rule_with_and_without_steps(length, heads, k_dim, v_dim, dtype):
    report = _case(length, heads, k_dim, v_dim, dtype)
    for keep, errors in report.items():
        assert errors["shape_and_dtype_match"] and errors["other_slots_untouched"], (keep, errors)
        for what in ("out", "state", "steps"):
            assert errors[what] is None or errors[what] <= TOLERANCE[dtype], (keep, what, errors)
    assert report["keep=True"]["steps"] is not None


def test_a_model_decodes_the_same_tokens_on_the_kernel_plain_and_with_mtp(tiny):
    """Through the layers: GatedDeltaNet hands its decode and verify steps to the kernel (kernels.delta_rule),
    and the float64 tokens equal the torch rule's, plain and MTP with k = 3 (verify, rollback by slot)."""
    tokens = _case("--model", tiny["qwen3.6-dense-tiny"])
    assert tokens["fused kernel calls"] > 24 and tokens["torch kernel calls"] == 0
    assert tokens["fused k=0"] == tokens["torch k=0"] and len(tokens["torch k=0"]) == 24
    assert tokens["fused k=3"] == tokens["torch k=3"] == tokens["torch k=0"]


def test_a_kernel_that_fails_is_reported_once_and_the_torch_rule_serves(monkeypatch, capsys):
    """A triton the kernel was not written for fails at its first launch: that step and every later one get
    the torch rule's result, the daemon's log says why once, and the kernel is not tried again."""
    import torch

    from daemon.model import kernels
    from daemon.tools.delta_rule_check import delta_rule_inputs, errors_against_torch

    tries = []

    def failing(*args):
        tries.append(1)
        raise RuntimeError("PTX .version 9.9 does not support .target sm_90")

    monkeypatch.setitem(kernels._fused, "rule", failing)
    monkeypatch.setattr(kernels, "has_fused_recurrent", lambda x: kernels._fused["rule"] is not None)
    inputs = delta_rule_inputs(3, 2, 16, 16, torch.float64, batch=2)
    for _ in range(2):  # the torch rule's own result: equal to the last bit
        errors = errors_against_torch(kernels.recurrent, inputs, keep_steps=True)
        assert errors["out"] == errors["state"] == errors["steps"] == 0.0 and errors["other_slots_untouched"]
    assert tries == [1] and kernels._fused["rule"] is None
    assert capsys.readouterr().err == ("mtpchatd: the fused delta-rule kernel failed (RuntimeError: PTX .version 9.9 "
                                       "does not support .target sm_90); DeltaNet layers use the torch rule\n")
