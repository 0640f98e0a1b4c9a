"""scripts/device_check.py's dry run: the GPU check's code paths on the CPU at tiny shapes, so the
script cannot rot between the rare runs on a device."""

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).parents[1] / "scripts" / "device_check.py"


def device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outcomes(report: dict) -> list[str]:
    """The "error" and "skipped" entries anywhere in a report."""
    found = []
    for key, value in report.items():
        if isinstance(value, dict):
            found += outcomes(value)
        elif key in ("error", "skipped"):
            found.append(value)
    return found


def test_a_failing_check_leaves_its_traceback_and_the_rest_run(tmp_path):
    out = tmp_path / "report.json"
    report = {}
    sections = device_check().Sections(report, str(out), 60.0, torch.device("cpu"))

    def broken():
        raise RuntimeError("no kernel for this shape")

    sections.run(("shapes", "broken"), broken)
    sections.run(("shapes", "fine"), lambda value: {"tok_s": value}, 5.0)
    written = json.loads(out.read_text())
    assert "RuntimeError: no kernel for this shape" in written["shapes"]["broken"]["error"]
    assert written["shapes"]["fine"] == {"tok_s": 5.0}
    sections.deadline_s = 0.0  # every later check would start past it
    sections.run(("late",), lambda: {"ran": True})
    assert json.loads(out.read_text())["late"] == {"skipped": "past the 0 s deadline"}


def test_device_check_dry_run(tmp_path):
    out = tmp_path / "device_check.json"
    device_check().main(["--dry-run", "--out", str(out)])
    report = json.loads(out.read_text())
    assert outcomes(report) == []
    # the parity path runs for every k; on the CPU both runners replay eager steps (the GPU run compares
    # eager with captured), so only agreement between two fresh runners is checked here
    assert set(report["parity"]) == {f"k{k}" for k in range(4)}
    assert all(entry["identical"] for entry in report["parity"].values())
    assert report["fidelity"]["k3"]["all_within_gap"]
    assert all(entry["identical"] for entry in report["serving_parity"].values())
    assert set(report["serving_parity"]) == {"k0", "k3", "k3_sampled"}
    for shape in report["shapes"].values():
        assert set(shape["verify_cost"]) == {"k1", "k2", "k3", "k4"}
        assert shape["serving"]["eager_tok_s"] > 0 and len(shape["serving"]) == 2
        assert set(shape["oracle"]) == {"60%", "70%", "80%", "90%"}
        # float32 on the CPU: what the drafts are changes how fast, never which tokens come out
        assert all(run["same_tokens"] for run in shape["oracle"].values()), shape["oracle"]
        assert shape["mtp_extra_bytes"]["32k"]["mtp_kv_cache"] == 8 * shape["mtp_extra_bytes"]["4k"]["mtp_kv_cache"]
    fused = report["fused_delta_rule"]  # on the CPU kernels.recurrent is the torch rule: agreement is exact
    assert fused["runs"] is False and fused["error_1_tokens"] == fused["error_4_tokens"] == 0.0
    assert set(fused["step_ms"]) == {"decode_fused", "verify_fused", "decode_torch", "verify_torch"}
    for method in ("int8", "int4", "fp8"):
        quantized = report["quantized"][method]
        assert quantized["quantized_layers_moe"] >= 20  # the tiny MoE's trunk and experts, each quantized
        assert all(rows["within_bound"] for rows in quantized["matmul"].values()), quantized["matmul"]
        assert all(entry["identical"] for entry in quantized["parity_moe"].values())
        assert quantized["decode_tok_s_captured"] > 0 and quantized["bytes_per_token"] > 0
