"""Checkpoints that ship quantized (Qwen FP8, compressed-tensors pack-quantized) load tensor by tensor
to exactly what their dequantized twins load to, and shipped int codes land on our kernels unchanged.

Tolerances and why:
- Logits are compared exactly (tolerance 0): the loader dequantizes in float32 (fp8·scale_inv, q·scale:
  one product per weight), the twin holds the same products computed by the tiny writer, so both
  models hold bit-identical weights and run the same deterministic forward. With quantize = "int8"
  both quantize those identical float32 weights, so they stay identical too.
- Shipped codes are compared exactly: q·scale with q of at most 8 bits and a bfloat16 scale is exact
  in float32, and so is the int4 kernel's (q+8-8)·scale + 0.
- Logits of a model running on the shipped codes are not compared with the float twin's: the kernels
  round every matmul's input and output to bfloat16, and these tiny random models amplify that (a
  bfloat16-rounding float twin still differs by up to 0.09 on logits of ~10); each kernel against its
  dequantized weight is pinned in tests/test_quantize.py.
- 8-bit groups of 128 requantized per channel: each weight within half a per-channel step of the
  stored one (the nearest grid point; 1e-6 slack for the float32 division). Measured on a 256x1024
  Gaussian matrix: 0.74% relative (Frobenius) from the stored weights, against 0.65% for the group
  quantization itself and 0.98% from the original float weights.
"""

import json

import pytest
import torch

from daemon.model.quantized import Int4Linear, Int8Linear, QuantizedExperts, int8_quantize
from daemon.tiny.quantized_checkpoints import FP8_BLOCK, TWIN, VARIANTS, int_groups, pack_int32
from daemon.weights.checkpoint import CheckpointError
from daemon.weights.loader import _load_shipped, load_model
from daemon.weights.prequantized import PackedCodes, fp8_dequantize, open_checkpoint, unpack_int32
from mtpchat.config import Quantization
from tests.helpers import random_ids


def _forward(model, ids):
    """(logits, and the MTP head's draft logits from the trunk's hidden states)."""
    logits, hidden = model(ids, model.new_cache(64, max_steps=4), 0)
    return logits, model.mtp_forward(ids[:, 1:5], hidden[:, :4], model.new_mtp_cache(64), 0)[0]


def test_fp8_blocks_dequantize_with_partial_edge_blocks():
    weight = torch.randn(300, 200, generator=torch.Generator().manual_seed(0)).to(torch.float8_e4m3fn)
    scale_inv = torch.rand(3, 2, generator=torch.Generator().manual_seed(1))  # ceil(300/128), ceil(200/128)
    out = fp8_dequantize(weight, scale_inv, (FP8_BLOCK, FP8_BLOCK))
    for i, j in ((0, 0), (2, 1), (299, 199), (128, 127), (256, 128)):
        assert out[i, j] == weight[i, j].float() * scale_inv[i // FP8_BLOCK, j // FP8_BLOCK]


def test_packing_follows_compressed_tensors_order():
    # compressed_tensors' own pack_to_int32 example: 8-bit [1, 2] -> unsigned [129, 130, 0, 0] -> 33409
    assert pack_int32(torch.tensor([[1, 2, -128, -128]], dtype=torch.int8), 8).item() == 33409
    for bits in (4, 8):
        top = 1 << (bits - 1)
        codes = torch.randint(-top, top, (16, 64), generator=torch.Generator().manual_seed(bits), dtype=torch.int8)
        assert torch.equal(unpack_int32(pack_int32(codes, bits), bits, 64), codes)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("quantization", [Quantization(), Quantization("int8")], ids=["none", "int8"])
@torch.inference_mode()
def test_a_shipped_quantized_checkpoint_loads_to_its_dequantized_twin(tiny_quantized, name, quantization):
    model = load_model(tiny_quantized[name], device="cpu", quantization=quantization)
    twin = load_model(tiny_quantized[name + TWIN], device="cpu", quantization=quantization)
    ids = random_ids(24, seed=4)
    for ours, theirs in zip(_forward(model, ids), _forward(twin, ids), strict=True):
        assert torch.equal(ours, theirs)


def _quantized_layers(model):
    """(name, layer) of the trunk's quantized layers, experts one by one."""
    for name, module in model.named_modules():
        if name.startswith("layers.") and isinstance(module, (Int4Linear, Int8Linear)):
            if module.experts:
                yield from ((f"{name}.{e}", module.expert(e)) for e in range(module.experts))
            else:
                yield name, module


@pytest.mark.parametrize("name, quantization, layer_type", [
    ("qwen3.6-dense-tiny-w4a16", Quantization("int4", 32, "none"), Int4Linear),
    ("qwen3.6-moe-tiny-w4a16", Quantization("int4", 32, "none"), Int4Linear),
    ("qwen3.6-dense-tiny-w8a16", Quantization("int8", 32, "none"), Int8Linear),
])
def test_shipped_int_codes_land_on_our_kernels_exactly(tiny_quantized, name, quantization, layer_type):
    model = load_model(tiny_quantized[name], device="cpu", quantization=quantization)
    twin = dict(load_model(tiny_quantized[name + TWIN], device="cpu").named_parameters())
    layers = list(_quantized_layers(model))
    assert layers and all(isinstance(layer, layer_type) for _, layer in layers)
    for layer_name, layer in layers:
        if ".experts." in layer_name:  # layers.L.mlp.experts.<kind>.<e> against the twin's fused [E, out, in]
            parent, expert = layer_name.rsplit(".", 1)
            expected = twin[parent][int(expert)]
        else:
            expected = twin[f"{layer_name}.weight"]
        assert torch.equal(layer.dequantized(), expected), layer_name
    if "moe" in name:
        assert isinstance(model.layers[0].mlp.experts, QuantizedExperts)


def test_8bit_groups_are_quantized_again_per_channel():
    weight = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
    codes, scales, stored = int_groups(weight, 8, 128)
    packed = PackedCodes(codes, scales, 8)
    assert torch.equal(packed.dequantized(), stored)
    with torch.device("meta"):
        layer = Int8Linear(1024, 256)
    layer.to_empty(device="cpu")
    assert not _load_shipped(layer, packed)  # no per-group int8 kernel: the loader dequantizes and loads
    layer.load(packed.dequantized())
    step = layer.scales.float()[:, None]
    assert ((layer.dequantized() - stored).abs() <= step / 2 * (1 + 1e-6)).all()
    error = (layer.dequantized() - stored).norm() / stored.norm()
    assert error < 0.01
    assert torch.equal(layer.weight_int8, int8_quantize(stored)[0])


@pytest.mark.parametrize("config, message", [
    ({"quant_method": "gptq", "bits": 4}, "quantized with 'gptq', which mtpchatd cannot read"),
    ({"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]}, "only e4m3"),
    ({"quant_method": "fp8", "fmt": "e4m3"}, "without a 2-D weight_block_size"),
    ({"quant_method": "compressed-tensors", "format": "float-quantized"}, "only 'pack-quantized'"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {
        "group_0": {"weights": {"num_bits": 4, "type": "int", "symmetric": False}}}}, "only symmetric int"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {
        "group_0": {"weights": {"num_bits": 8, "type": "int", "symmetric": True},
                    "input_activations": {"num_bits": 8}}}}, "weight-only"),
])
def test_schemes_we_cannot_read_are_refused_by_name(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": config}))
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(tmp_path)
