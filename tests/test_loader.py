"""Loading checkpoints as users have them: hub VLM layout and text-only layout, fused and per-expert
experts, the offline Hugging Face cache — and clear errors that name the tensor and the file."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from daemon.model.config import TextConfig
from daemon.model.linear import checkpoint_tensors, stacked_layers
from daemon.weights.checkpoint import CheckpointError, CheckpointFiles, resolve_checkpoint
from daemon.weights.loader import TRUNK_PREFIXES, load_model
from tests.helpers import reference_model


def test_both_moe_mtp_layouts_load_to_the_same_module(tiny):
    fused_files = CheckpointFiles(tiny["qwen3.6-moe-tiny"]).names()
    per_expert_files = CheckpointFiles(tiny["qwen3.5-moe-tiny"]).names()
    assert "mtp.layers.0.mlp.experts.gate_up_proj" in fused_files
    assert "mtp.layers.0.mlp.experts.0.gate_proj.weight" in per_expert_files
    assert "mtp.layers.0.mlp.experts.gate_up_proj" not in per_expert_files

    fused = load_model(tiny["qwen3.6-moe-tiny"], device="cpu").state_dict()
    per_expert = load_model(tiny["qwen3.5-moe-tiny"], device="cpu").state_dict()
    assert fused.keys() == per_expert.keys()
    assert any(k.startswith("mtp.layers.0.mlp.experts.") for k in fused)
    for name in fused:
        assert torch.equal(fused[name], per_expert[name]), name


@pytest.mark.parametrize("name", ["qwen3.6-dense-tiny", "qwen3.6-moe-tiny"])
def test_stacked_layers_hold_the_checkpoints_tensors_row_for_row(tiny, name):
    """q/k/v load as one qkv_proj and gate/up as one gate_up_proj; split back, every tensor is the
    checkpoint's own, bit for bit (what train-head's saved head relies on)."""
    model = load_model(tiny[name], device="cpu")
    files = CheckpointFiles(tiny[name])
    stacked = stacked_layers(model)
    assert any(layer.endswith("self_attn.qkv_proj") for layer in stacked)
    assert any(layer.endswith("gate_up_proj") for layer in stacked)
    prefix = next(p for p in TRUNK_PREFIXES if p + "embed_tokens.weight" in files)
    tensors = checkpoint_tensors(model)
    split = [n for n in tensors if n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight",
                                               "mlp.gate_proj.weight", "mlp.up_proj.weight"))]
    assert split and not [n for n in tensors if "qkv_proj" in n or n.endswith("mlp.gate_up_proj.weight")]
    for n in split:
        stored = n if n.startswith("mtp.") else prefix + n
        assert torch.equal(tensors[n], files.read(stored)), n


def test_text_only_checkpoint_with_per_expert_trunk_loads(tiny, tmp_path):
    """transformers' save_pretrained writes `model.*` names and experts one by one."""
    loaded = reference_model(tiny["qwen3.6-moe-tiny"])
    fresh = type(loaded)(loaded.config)  # saved as built, without the VLM key mapping it was loaded with
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(tmp_path)
    names = CheckpointFiles(tmp_path).names()
    assert "model.layers.0.mlp.experts.0.gate_proj.weight" in names
    text_only = load_model(tmp_path, device="cpu")
    hub = load_model(tiny["qwen3.6-moe-tiny"], device="cpu")
    assert text_only.mtp is None and hub.mtp is not None
    for name, tensor in text_only.state_dict().items():
        assert torch.equal(tensor, hub.state_dict()[name]), name


def test_vision_tensors_are_never_read(tiny, monkeypatch):
    read = []
    original = CheckpointFiles.read
    monkeypatch.setattr(CheckpointFiles, "read",
                        lambda self, name, shape=None: read.append(name) or original(self, name, shape))
    load_model(tiny["qwen3.6-dense-tiny"], device="cpu")
    assert any(n.startswith("mtp.") for n in read) and "lm_head.weight" in read
    assert not [n for n in read if n.startswith("model.visual.")]
    assert any(n.startswith("model.visual.") for n in CheckpointFiles(tiny["qwen3.6-dense-tiny"]).names())


def test_dtype_is_chosen_per_device_and_overridable(tiny):
    assert load_model(tiny["qwen3.6-dense-tiny"], device="cpu").dtype == torch.float32
    model = load_model(tiny["qwen3.6-dense-tiny"], device="cpu", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.rotary_frequencies(model.device).dtype == torch.float32
    logits, _ = model(torch.tensor([[1, 2, 3]]), model.new_cache(8), 0)
    assert torch.isfinite(logits).all()


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _rewrite_shard_of(checkpoint, name, change):
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    filename = index["weight_map"][name]
    tensors = load_file(checkpoint / filename)
    change(tensors)
    save_file(tensors, checkpoint / filename)
    return filename


def test_missing_tensor_error_names_tensor_and_file(tiny, tmp_path):
    ckpt = _copy(tiny["qwen3.6-moe-tiny"], tmp_path / "ckpt")
    name = "mtp.layers.0.mlp.experts.down_proj"
    filename = _rewrite_shard_of(ckpt, name, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' in .*{filename} cannot be read"):
        load_model(ckpt, device="cpu")


def test_tensor_absent_from_index_is_named(tiny, tmp_path):
    ckpt = _copy(tiny["qwen3.6-dense-tiny"], tmp_path / "ckpt")
    index_path = ckpt / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"]["model.language_model.layers.3.self_attn.k_norm.weight"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"'model.language_model.layers.3.self_attn.k_norm.weight' is missing"
                                              r".*model.safetensors.index.json"):
        load_model(ckpt, device="cpu")


def test_malformed_tensor_error_names_shape_tensor_and_file(tiny, tmp_path):
    ckpt = _copy(tiny["qwen3.6-dense-tiny"], tmp_path / "ckpt")
    name = "model.language_model.layers.0.linear_attn.in_proj_a.weight"
    filename = _rewrite_shard_of(ckpt, name, lambda t: t.update({name: t[name][:-1]}))
    with pytest.raises(CheckpointError, match=rf"'{name}' in .*{filename} has shape \(3, 64\), expected \(4, 64\)"):
        load_model(ckpt, device="cpu")


def test_missing_shard_file_is_named(tiny, tmp_path):
    ckpt = _copy(tiny["qwen3.6-dense-tiny"], tmp_path / "ckpt")
    (ckpt / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"cannot read .*model-00002-of-00003.safetensors"):
        load_model(ckpt, device="cpu")


def test_tensors_read_equal_safetensors_own_reading_for_every_dtype(tmp_path):
    """The reader (plain reads, not a memory map) against safetensors' load_file as the reference: same
    values, dtype and shape for every dtype a checkpoint holds, empty and 0-d tensors included."""
    gen = torch.Generator().manual_seed(3)
    tensors = {f"t.{dtype}": (torch.randn(5, 7, generator=gen) * 9).to(dtype) for dtype in (
        torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)}
    tensors |= {"empty": torch.empty(0, 3), "scalar": torch.tensor(2.5)}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    files, expected = CheckpointFiles(tmp_path), load_file(tmp_path / "model.safetensors")
    assert sorted(files.names()) == sorted(expected)
    for name, want in expected.items():
        got = files.read(name, tuple(want.shape))
        assert got.dtype == want.dtype, name
        assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)), name


def test_truncated_or_garbled_shard_is_named(tiny, tmp_path):
    ckpt = _copy(tiny["qwen3.6-dense-tiny"], tmp_path / "ckpt")
    shard = ckpt / "model-00003-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])  # a download cut short: the last tensor's end is missing
    with pytest.raises(CheckpointError, match=r"in .*model-00003-of-00003.safetensors cannot be read: the file "
                                              r"ends inside the tensor's data"):
        load_model(ckpt, device="cpu")
    shard.write_bytes(b"<html>rate limited</html>")  # not a safetensors file at all
    with pytest.raises(CheckpointError, match=r"cannot read .*model-00003-of-00003.safetensors: header length"):
        load_model(ckpt, device="cpu")


def test_missing_checkpoint_and_unknown_repo_id_say_what_was_looked_for(tmp_path, monkeypatch):
    for missing in (tmp_path / "nowhere", "./nowhere", "../a/b"):
        with pytest.raises(CheckpointError, match="not found: expected a directory"):
            resolve_checkpoint(missing)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match=r"'Qwen/Qwen3.6-27B' is not a local directory and is not in the "
                                              r"Hugging Face cache .*hf download Qwen/Qwen3.6-27B"):
        resolve_checkpoint("Qwen/Qwen3.6-27B")


def test_repo_id_resolves_offline_from_the_hugging_face_cache(tiny, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / "models--Qwen--Qwen3.6-27B"
    shutil.copytree(tiny["qwen3.6-dense-tiny"], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    assert resolve_checkpoint("Qwen/Qwen3.6-27B") == repo / "snapshots" / revision
    assert load_model("Qwen/Qwen3.6-27B", device="cpu").mtp is not None


def test_config_reads_vlm_and_bare_text_configs(tiny):
    raw = json.loads((tiny["qwen3.6-moe-tiny"] / "config.json").read_text())
    from_vlm = TextConfig.from_dict(raw)
    from_text = TextConfig.from_dict(raw["text_config"])
    assert from_vlm == from_text
    assert from_vlm.is_moe and from_vlm.mtp_num_hidden_layers == 1
    assert from_vlm.layer_types.count("full_attention") == 2
    assert [i for i, t in enumerate(from_vlm.layer_types) if t == "full_attention"] == [3, 7]
    assert from_vlm.rotary_dim == 8 and from_vlm.num_key_value_heads < from_vlm.num_attention_heads


def test_config_errors_are_clear(tmp_path):
    dense = {"vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1,
             "intermediate_size": 8}
    with pytest.raises(ValueError, match="unsupported model_type 'mistral'"):
        TextConfig.from_dict({"model_type": "mistral", **dense})
    with pytest.raises(ValueError, match="rope_type 'yarn' is not supported"):
        TextConfig.from_dict({"model_type": "llama", "rope_scaling": {"rope_type": "yarn"}, **dense})
    with pytest.raises(ValueError, match="attention_bias = true is not supported"):
        TextConfig.from_dict({"model_type": "llama", "attention_bias": True, **dense})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        TextConfig.from_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen3_5"}')
    with pytest.raises(ValueError, match="lacks the field 'num_hidden_layers'"):
        TextConfig.from_checkpoint(tmp_path)


def test_a_checkpoint_with_more_than_one_mtp_layer_is_refused(tiny, tmp_path):
    ckpt = shutil.copytree(tiny["qwen3.6-dense-tiny"], tmp_path / "ckpt")
    raw = json.loads((ckpt / "config.json").read_text())
    raw["text_config"]["mtp_num_hidden_layers"] = 2
    (ckpt / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"mtp_num_hidden_layers = 2 is not supported: the MTP head must have "
                                         r"at most one layer \(mtp.layers.0\)"):
        load_model(ckpt, device="cpu")


def test_load_progress_rises_to_one(tiny):
    seen = []
    load_model(tiny["qwen3.6-moe-tiny"], device="cpu", progress=seen.append)
    assert len(seen) > 10 and seen == sorted(seen) and seen[-1] == 1.0 and seen[0] > 0
