"""scripts/device_check.py's dry run: the GPU check's code paths on the CPU at tiny shapes, so the
script cannot rot between the rare runs on a device."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "device_check.py"


def test_device_check_dry_run(tmp_path):
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "device_check.json"
    module.main(["--dry-run", "--out", str(out)])
    report = json.loads(out.read_text())
    # the parity path runs for every k; on the CPU both runners replay eager steps (the GPU run compares
    # eager with captured), so only agreement between two fresh runners is checked here
    assert set(report["parity"]) == {f"k{k}" for k in range(4)}
    assert all(entry["identical"] for entry in report["parity"].values())
    assert report["fidelity"]["k3"]["all_within_gap"]
    for shape in report["shapes"].values():
        assert set(shape["verify_cost"]) == {"k1", "k2", "k3", "k4"}
        assert set(shape["oracle"]) == {"60%", "70%", "80%", "90%"}
        assert shape["mtp_extra_bytes"]["32k"]["mtp_kv_cache"] == 8 * shape["mtp_extra_bytes"]["4k"]["mtp_kv_cache"]
    for method in ("int8", "int4", "fp8"):
        quantized = report["quantized"][method]
        assert quantized["quantized_layers_moe"] >= 20  # the tiny MoE's trunk and experts, each quantized
        assert all(rows["within_bound"] for rows in quantized["matmul"].values()), quantized["matmul"]
        assert all(entry["identical"] for entry in quantized["parity_moe"].values())
        assert quantized["decode_tok_s_captured"] > 0 and quantized["bytes_per_token"] > 0
