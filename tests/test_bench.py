"""`mtpchat bench` measures what it claims: oracle acceptance follows the set accuracy, summaries are
consistent with the runs, and MTP output is checked against plain output."""

import json
import os
import subprocess
import sys

import pytest
import torch

from daemon.__main__ import main as daemon_main
from daemon.model.config import TextConfig
from daemon.model.quantized import Int4Linear, Int8Linear, QuantizedExperts
from daemon.tools.bandwidth import layer_bandwidth, machine_bandwidth
from daemon.tools.bench import bench_checkpoint, bench_oracle, step_costs
from daemon.tools.real_shapes import random_model, shape_config
from daemon.tools.step_timing import alternating_medians
from daemon.weights.loader import load_model
from mtpchat.config import Quantization
from tests.helpers import random_ids


def test_oracle_acceptance_follows_the_set_accuracy(tiny):
    model = load_model(tiny["qwen3.6-dense-tiny"], device="cpu")
    prompt = random_ids(16, seed=31)[0].tolist()
    result = bench_oracle(model, prompt, 24, ks=[2, 3], rates=[0.0, 1.0])
    for k in ("2", "3"):
        perfect = result["1.00"]["mtp"][k]
        assert perfect["acceptance_rate"] == 1.0 and perfect["acceptance_per_position"] == [1.0] * int(k)
        # every step accepts all its drafts; only the last may draft fewer (the token limit)
        assert int(k) < perfect["mean_acceptance_length"] <= int(k) + 1
        useless = result["0.00"]["mtp"][k]
        assert useless["acceptance_rate"] == 0.0 and useless["mean_acceptance_length"] == 1.0
        assert useless["speedup"] > 0 and useless["extra_state_bytes"] > 0


def test_checkpoint_bench_checks_identity_and_reports_every_k(tiny):
    model = load_model(tiny["qwen3.6-moe-tiny"], device="cpu")
    prompts = [random_ids(10, seed=s)[0].tolist() for s in (32, 33)]
    result = bench_checkpoint(model, prompts, 12, ks=[1, 3])
    assert result["mtp_identical_to_plain"] is True
    assert set(result["mtp"]) == {"1", "3", "auto"}
    for summary in result["mtp"].values():
        assert summary["drafts"] > 0
        assert len(summary["acceptance_per_position"]) <= 3
        assert summary["decode_tok_s"] > 0 and summary["prefill_tok_s"] > 0


def test_real_shapes_scale_down_keeping_the_layer_pattern():
    config = shape_config("qwen3.6-35b-a3b", layers=8, vocab=512)
    assert config.num_experts == 256 and config.hidden_size == 2048 and config.vocab_size == 512
    assert config.layer_types == (("linear_attention",) * 3 + ("full_attention",)) * 2
    assert shape_config("qwen3.6-27b").num_hidden_layers == 64


def test_random_model_and_step_costs(tiny):
    config = TextConfig.from_checkpoint(tiny["qwen3.6-moe-tiny"])
    model = random_model(config, "cpu", torch.float32)
    assert model.mtp is not None
    costs = step_costs(model, ks=[1, 2], context=16, repeats=1)
    assert costs["decode_step_s"] > 0 and set(costs["verify_vs_decode"]) == {"1", "2"}
    assert costs["draft_step_vs_decode"] > 0 and 0 < costs["lm_head_vs_decode"] < 1


def test_timings_are_taken_in_alternating_rounds():
    calls = []
    samplers = {name: (lambda name=name: calls.append(name) or [len(calls)]) for name in ("decode", "verify", "draft")}
    medians = alternating_medians(samplers, rounds=3)
    assert calls == ["decode", "verify", "draft"] * 3
    assert medians == {"decode": 4, "verify": 5, "draft": 6}  # each one's middle round


def test_a_random_model_can_be_quantized_as_the_loader_would(tiny):
    config = TextConfig.from_checkpoint(tiny["qwen3.6-moe-tiny"])
    model = random_model(config, "cpu", torch.float32, quantization=Quantization("int4", 32, "int8"))
    assert isinstance(model.layers[3].self_attn.qkv_proj, Int4Linear)
    assert isinstance(model.layers[3].mlp.experts, QuantizedExperts) and isinstance(model.mtp.fc, Int8Linear)
    float_twin = random_model(config, "cpu", torch.float32)
    assert (layer_bandwidth(model, repeats=1)["qkv_proj"]["mb"]
            < layer_bandwidth(float_twin, repeats=1)["qkv_proj"]["mb"] / 4)
    prompt = random_ids(12, seed=3)[0].tolist()
    assert bench_checkpoint(model, [prompt], 8, ks=[2])["mtp_identical_to_plain"] is True


def test_layer_bandwidth_counts_each_kinds_weights(tiny):
    """Each weight layer kind is timed with exactly its layers' bytes: qkv_proj stacks q, k and v, and
    at int4 the same layers hold a little over an eighth of their float32 bytes (4 bits + scales)."""
    path = tiny["qwen3.6-dense-tiny"]
    config = TextConfig.from_checkpoint(path)
    full = layer_bandwidth(load_model(path, device="cpu"), repeats=1)
    attention_layers = config.layer_types.count("full_attention")
    qkv_rows = config.num_attention_heads * config.head_dim * 2 + 2 * config.num_key_value_heads * config.head_dim
    assert full["qkv_proj"]["layers"] == attention_layers and full["mtp.qkv_proj"]["layers"] == 1
    assert full["qkv_proj"]["mb"] == round(attention_layers * qkv_rows * config.hidden_size * 4 / 1e6, 2)
    assert {"o_proj", "gate_up_proj", "down_proj", "lm_head", "mtp.fc"} <= set(full)
    assert all(kind["gb_s"] > 0 for kind in full.values())
    int4 = layer_bandwidth(load_model(path, device="cpu", quantization=Quantization("int4", 32)), repeats=1)
    assert full["gate_up_proj"]["mb"] / 8 < int4["gate_up_proj"]["mb"] < full["gate_up_proj"]["mb"] / 4
    machine = machine_bandwidth(mb=16, repeats=1)
    assert machine["read_gb_s"] > 0 and machine["copy_gb_s"] > 0


def test_bench_command_prints_json(tiny, tmp_path):
    env = dict(os.environ, MTPCHAT_HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "daemon", "bench", "--model", str(tiny["qwen3.6-dense-tiny"]),
                           "--draft", "2", "--prompt", "Hi", "--prompt", "Tell me about the sea", "--max-tokens", "8",
                           "--draft-vocab", "512"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["checkpoint"]["mtp"]["2"]["speedup"] > 0 and report["dtype"] == "float32"
    assert report["prompts"] == 2  # the two given, not the built-in ones
    assert report["cuda_graphs"] is False  # graph lanes are the GPU's
    assert report["checkpoint_draft_vocab"]["mtp_identical_to_plain"] is True
    assert report["layer_bandwidth"]["lm_head"]["gb_s"] > 0 and report["machine_bandwidth"]["read_gb_s"] > 0


def test_bench_command_measures_each_quantization(tiny, tmp_path):
    env = dict(os.environ, MTPCHAT_HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "daemon", "bench", "--model", str(tiny["qwen3.6-dense-tiny"]),
                           "--draft", "1", "--prompt", "Hi", "--max-tokens", "6", "--quantize", "none,int4"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["by_quantize"]
    assert set(report) == {"none", "int4 (group 32)"}
    assert all(part["checkpoint"]["mtp_identical_to_plain"] for part in report.values())


@pytest.mark.parametrize("flag, value, told", [
    ("--draft", "auto", "--draft: 'auto': want a comma list of draft lengths from 1 to 4"),
    ("--draft", "0,2", "--draft: '0,2': want a comma list of draft lengths from 1 to 4"),
    ("--oracle", "0.8,1.5", "--oracle: '0.8,1.5': want a comma list of accuracies from 0 to 1"),
    ("--conversation", "1,,5", "--conversation: '1,,5': want a comma list of turns from 1 to 1000"),
])
def test_bench_lists_out_of_range_are_usage_errors_before_any_model_loads(flag, value, told, capsys):
    with pytest.raises(SystemExit) as stopped:
        daemon_main(["bench", flag, value])
    assert stopped.value.code == 2 and told in capsys.readouterr().err
