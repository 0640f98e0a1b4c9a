"""The tiny checkpoints really are in the hub's layout, and are built deterministically."""

import json

from daemon.tiny.qwen_checkpoints import build_checkpoint
from daemon.weights.checkpoint import CheckpointFiles


def test_layout_matches_the_hub(tiny):
    for name, path in tiny.items():
        config = json.loads((path / "config.json").read_text())
        moe = "moe" in name
        assert config["architectures"] == ["Qwen3_5MoeForConditionalGeneration" if moe else
                                           "Qwen3_5ForConditionalGeneration"]
        assert config["model_type"] == ("qwen3_5_moe" if moe else "qwen3_5")
        assert config["text_config"]["mtp_num_hidden_layers"] == 1
        index = json.loads((path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1, "sharded"
        names = CheckpointFiles(path).names()
        assert "lm_head.weight" in names and "model.language_model.embed_tokens.weight" in names
        assert any(n.startswith("model.visual.") for n in names)
        assert "mtp.fc.weight" in names and "mtp.layers.0.self_attn.q_proj.weight" in names
        if moe:
            assert "model.language_model.layers.0.mlp.experts.gate_up_proj" in names
        else:
            assert "mtp.layers.0.mlp.gate_proj.weight" in names
        assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in path.iterdir()}


def test_builds_are_byte_identical(tmp_path):
    first = build_checkpoint(tmp_path / "a", "moe", "per_expert", seed=3)
    second = build_checkpoint(tmp_path / "b", "moe", "per_expert", seed=3)
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in second.iterdir())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
