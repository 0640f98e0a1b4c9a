"""The MTP head against a reference composed from transformers' own layer and norm classes.

transformers has no MTP module (it ignores `mtp.*` on load), so the reference is assembled here from
the parts DESIGN.md §3 names: fc over [pre_fc_norm_embedding(embed(t_{i+1})) | pre_fc_norm_hidden(h_i)],
one full-attention decoder layer at position i, mtp.norm, the trunk's lm_head — with h_i the trunk's
post-norm hidden from transformers' own forward. Checked in float64 (transformers' float64 twin, see
tests.helpers.float64_twin) and float32, each against the scaled bar of tests.helpers.
"""

import pytest
import torch
from torch import nn

from daemon.weights.checkpoint import CheckpointFiles
from daemon.weights.loader import load_model
from tests.helpers import DTYPES, assert_scaled_close, random_ids, reference_model, reference_module


def _reference_mtp(checkpoint, ref):
    moe = ref.config.model_type.startswith("qwen3_5_moe")
    module = reference_module("qwen3_5_moe" if moe else "qwen3_5", ref.dtype)
    Layer = module.Qwen3_5MoeDecoderLayer if moe else module.Qwen3_5DecoderLayer
    Norm = module.Qwen3_5MoeRMSNorm if moe else module.Qwen3_5RMSNorm
    files = CheckpointFiles(checkpoint)
    config = ref.config  # in float64 its experts run transformers' eager loop (see reference_model)
    hidden = config.hidden_size
    layer = Layer(config, config.layer_types.index("full_attention")).eval()
    prefix = "mtp.layers.0."
    layer.load_state_dict({n[len(prefix):]: files.read(n) for n in files.names() if n.startswith(prefix)})
    parts = {name: Norm(hidden, eps=config.rms_norm_eps) for name in
             ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm")}
    for name, norm in parts.items():
        norm.load_state_dict({"weight": files.read(f"mtp.{name}.weight")})
    fc = nn.Linear(2 * hidden, hidden, bias=False)
    fc.load_state_dict({"weight": files.read("mtp.fc.weight")})
    return layer.to(ref.dtype), {k: v.to(ref.dtype) for k, v in parts.items()}, fc.to(ref.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["qwen3.6-dense-tiny", "qwen3.6-moe-tiny"])
@torch.inference_mode()
def test_mtp_logits_match_reference(tiny, name, dtype, report_parity):
    ref = reference_model(tiny[name], dtype)
    layer, norms, fc = _reference_mtp(tiny[name], ref)
    tokens = random_ids(16, seed=11)
    pairs = tokens.shape[1] - 1
    trunk_hidden = ref.model(input_ids=tokens).last_hidden_state
    x = fc(torch.cat((norms["pre_fc_norm_embedding"](ref.model.embed_tokens(tokens[:, 1:])),
                      norms["pre_fc_norm_hidden"](trunk_hidden[:, :-1])), dim=-1))
    position_embeddings = ref.model.rotary_emb(x, torch.arange(pairs)[None])
    causal = torch.full((pairs, pairs), float("-inf"), dtype=dtype).triu(1)[None, None]
    expected = ref.lm_head(norms["norm"](layer(x, position_embeddings=position_embeddings, attention_mask=causal)))

    ours = load_model(tiny[name], device="cpu", dtype=dtype)
    _, hidden = ours(tokens, ours.new_cache(32), 0)
    logits, mtp_hidden = ours.mtp_forward(tokens[:, 1:], hidden[:, :-1], ours.new_mtp_cache(32), 0)
    diff = assert_scaled_close(logits, expected, f"{name} MTP head")
    report_parity(f"{name} MTP head {str(dtype)[6:]}, {pairs} positions (scale {expected.abs().max():.1f})", diff)
    assert mtp_hidden.shape == (1, pairs, ours.config.hidden_size)


@pytest.mark.parametrize("dtype", DTYPES)
@torch.inference_mode()
def test_mtp_cache_gives_the_same_logits_incrementally(tiny, dtype):
    model = load_model(tiny["qwen3.6-moe-tiny"], device="cpu", dtype=dtype)
    tokens = random_ids(12, seed=12)
    _, hidden = model(tokens, model.new_cache(16), 0)
    all_at_once, _ = model.mtp_forward(tokens[:, 1:], hidden[:, :-1], model.new_mtp_cache(16), 0)
    cache = model.new_mtp_cache(16)
    pieces = [model.mtp_forward(tokens[:, 1:7], hidden[:, :6], cache, 0)[0]]
    for i in range(6, 11):
        pieces.append(model.mtp_forward(tokens[:, i + 1:i + 2], hidden[:, i:i + 1], cache, i)[0])
    # the same maths over 6 + 1 + 1 ... queries instead of 11 (other matmul/attention kernels): scaled bar
    assert_scaled_close(torch.cat(pieces, dim=1), all_at_once, "incremental MTP")


def test_checkpoint_without_mtp_tensors_has_no_head(tiny, tmp_path):
    import json
    import shutil

    ckpt = shutil.copytree(tiny["qwen3.6-dense-tiny"], tmp_path / "ckpt")
    index_path = ckpt / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not k.startswith("mtp.")}
    index_path.write_text(json.dumps(index))
    model = load_model(ckpt, device="cpu")
    assert model.mtp is None
    with pytest.raises(RuntimeError, match="no MTP head"):
        model.mtp_forward(torch.tensor([[1]]), torch.zeros(1, 1, 64), model.new_mtp_cache(4), 0)
