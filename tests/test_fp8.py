"""FP8 layers (daemon.model.fp8): block quantization as Qwen's FP8 releases store it, activations
quantized per token and 128 inputs, the product those codes stand for, shipped FP8 codes loaded as they
are, and a CUDA layout that takes the shapes cuBLAS's blockwise kernel takes.

Tolerances and why:
- Codes, scales and weights are compared exactly: a block scale is a float32 division, the codes are
  the float8 rounding torch does, and codes·scale is one float32 product of a 4-bit mantissa and a
  float32 (exact).
- An activation's codes·scale against the activation: within half a float8_e4m3fn step, 2^-4 of the
  magnitude (3 mantissa bits), or 2^-10 of the scale below the normal range (subnormal steps are 2^-9).
- The layer's product against float64 over the same codes: float32 accumulation of K products of exact
  terms, at most K·2^-24 of Σ|x||w| (the classic bound, K ≤ 256 here) — a misread scale or block is
  off by the factors of 8 the test puts between blocks.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from daemon.model.fp8 import (
    FP8,
    FP8_BLOCK,
    Fp8Linear,
    check_fp8_matmul,
    cublas_block_operands,
    fp8_activations,
    fp8_block_quantize,
    fp8_reference_mm,
    fp8_weight,
    fp8_widened,
)
from daemon.model.quantized import QuantizedExperts, quantize_modules
from daemon.tiny.quantized_checkpoints import TWIN, fp8_blocks
from daemon.weights.loader import load_model
from mtpchat.config import Quantization

SPREAD = torch.tensor([1.0, 8.0, 64.0])  # per 128-block factors: a block read with another's scale shows


def _spread(rows: int, cols: int, seed: int) -> torch.Tensor:
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    factors = SPREAD[torch.arange(cols) // FP8_BLOCK % 3] * SPREAD[torch.arange(rows) // FP8_BLOCK % 3][:, None]
    return weight * factors


def _layer(weight: torch.Tensor, experts: int = 0) -> Fp8Linear:
    with torch.device("meta"):
        layer = Fp8Linear(weight.shape[-1], weight.shape[-2], experts)
    layer.to_empty(device="cpu")
    if experts:
        for e in range(experts):
            layer.expert(e).load(weight[e])
    else:
        layer.load(weight)
    return layer


def test_block_quantization_is_the_releases_with_partial_edge_blocks():
    weight = _spread(300, 200, seed=0)  # 3 x 2 blocks, the last of each side partial
    codes, scale_inv = fp8_block_quantize(weight)
    expected_codes, expected_scales, twin = fp8_blocks(weight)  # the tiny writer's own block loop
    assert codes.dtype == FP8 and scale_inv.shape == (3, 2)
    assert torch.equal(codes.view(torch.uint8), expected_codes.view(torch.uint8))
    assert torch.equal(scale_inv, expected_scales)
    assert torch.equal(fp8_weight(codes, scale_inv), twin)
    assert torch.equal(codes.float().abs().amax(), torch.tensor(448.0))  # each block's max maps to FP8's


def test_activations_take_a_scale_per_token_and_128_inputs():
    x = _spread(5, 300, seed=1)[:, :300]
    x[2] = 0  # an all-zero row quantizes to zeros
    codes, scales = fp8_activations(x)
    assert scales.shape == (5, 3)
    widened = fp8_widened(codes, scales)
    per_input = scales.repeat_interleave(FP8_BLOCK, dim=1)[:, :300]
    assert ((widened - x).abs() <= torch.maximum(2.0**-4 * x.abs(), 2.0**-10 * per_input)).all()
    assert torch.equal(widened[2], torch.zeros(300))
    for row, block in ((0, 0), (4, 2)):  # the block's largest magnitude is kept exactly
        part = x[row, block * FP8_BLOCK:(block + 1) * FP8_BLOCK]
        assert widened[row, block * FP8_BLOCK:][part.abs().argmax()] == part[part.abs().argmax()]


@torch.inference_mode()
def test_the_layer_multiplies_the_codes_it_holds():
    weight = _spread(272, 384, seed=2)
    layer = _layer(weight)
    x = _spread(6, 384, seed=3)
    codes, scales = fp8_activations(x)
    exact = fp8_widened(codes, scales).double() @ layer.dequantized().double().t()
    magnitude = fp8_widened(codes, scales).abs().double() @ layer.dequantized().abs().double().t()
    out = layer(x)
    assert out.dtype == x.dtype and out.shape == (6, 272)
    assert ((out.double() - exact).abs() <= 384 * 2.0**-24 * magnitude).all()
    assert torch.equal(out, fp8_reference_mm(codes, scales, layer.weight_fp8, layer.scale_inv))
    # a row's result does not depend on the rows beside it, nor on how many outputs are asked for
    assert torch.equal(layer(x[2:3]), out[2:3])
    assert torch.equal(layer(x, outputs=130), out[:, :130])
    assert torch.equal(layer(x.reshape(2, 3, 384)), out.reshape(2, 3, 272))


@pytest.mark.parametrize("tokens", [1, 3])
@torch.inference_mode()
def test_fp8_experts_traced_form_equals_the_loop_bit_for_bit(tokens):
    generator = torch.Generator().manual_seed(tokens)
    with torch.device("meta"):
        experts = QuantizedExperts(4, 128, 128, "fp8", 32)
    experts.to_empty(device="cpu")
    experts.load("gate_up_proj", torch.randn(4, 256, 128, generator=generator))
    experts.load("down_proj", torch.randn(4, 128, 128, generator=generator))
    x = torch.randn(tokens, 128, generator=generator)
    chosen = torch.stack([torch.randperm(4, generator=generator)[:2] for _ in range(tokens)])
    weights = torch.rand(tokens, 2, generator=generator)
    assert isinstance(experts.down_proj, Fp8Linear) and experts.down_proj.experts == 4
    assert torch.equal(experts.slots(x, chosen, weights), experts(x, chosen, weights))


def test_shipped_fp8_codes_load_as_shipped(tiny_quantized):
    """Where a layer's checkpoint parts fill whole 128-row blocks, its codes and scales are the shipped
    ones (compared with the dequantized twin exactly); parts that do not (the tiny model's 32-row
    expert halves, its q/k/v) are dequantized and quantized again in the layer's own blocks."""
    for name in ("qwen3.6-dense-tiny-fp8", "qwen3.6-moe-tiny-fp8"):
        model = load_model(tiny_quantized[name], device="cpu", quantization=Quantization("fp8"))
        twin = dict(load_model(tiny_quantized[name + TWIN], device="cpu").named_parameters())
        shipped = requantized = 0
        for layer_name, layer in model.named_modules():
            if not (isinstance(layer, Fp8Linear) and layer_name.startswith("layers.")):
                continue
            for expert, stored in ([(e, twin[layer_name][e]) for e in range(layer.experts)] if layer.experts
                                   else [(None, twin[f"{layer_name}.weight"])]):
                one = layer if expert is None else layer.expert(expert)
                if torch.equal(one.dequantized(), stored):
                    shipped += 1
                else:
                    assert torch.equal(one.dequantized(), fp8_weight(*fp8_block_quantize(stored))), layer_name
                    requantized += 1
        assert shipped >= 20 and requantized >= 2, (name, shipped, requantized)
        if "moe" in name:
            assert isinstance(model.layers[0].mlp.experts.gate_up_proj, Fp8Linear)


def test_cuda_fp8_layers_take_the_shapes_cublas_takes():
    """No GPU here: on fake CUDA tensors, torch's shape checks of `_scaled_mm` (row-major activations,
    column-major weight, dimensions in 16s, blockwise scale shapes) pass for a plain layer, its first
    outputs and one expert of a stack; the values are checked on a GPU by scripts/device_check.py."""
    assert not Fp8Linear.fits(96, 256, "cuda") and not Fp8Linear.fits(256, 40, "cuda") and Fp8Linear.fits(96, 40)
    with FakeTensorMode():
        layer = Fp8Linear(512, 384, kernels="cuda").to_empty(device="cuda")
        stacked = Fp8Linear(256, 128, experts=3, kernels="cuda").to_empty(device="cuda")
        for rows in (1, 4):
            x = torch.empty(rows, 512, device="cuda", dtype=torch.bfloat16)
            assert layer(x).shape == (rows, 384) and layer(x).dtype == torch.bfloat16
            assert layer(x, outputs=256).shape == (rows, 256)
            assert stacked(x.narrow(1, 0, 256), expert=torch.tensor(2, device="cuda")).shape == (rows, 128)


def test_cublas_operands_pad_the_inputs_to_whole_groups_of_four_blocks():
    """cuBLAS reads a 128x128-scaled weight's scales as [L4, N/128], L4 = K/128 rounded up to 4: a
    2-block product is padded to 4 blocks with zero codes under scales of 1 (exactly the same values
    where there were inputs, so the same product), and a 4-block one is passed as it is."""
    generator = torch.Generator().manual_seed(0)
    weight, scale_inv = fp8_block_quantize(torch.randn(256, 256, generator=generator))
    codes, scales = fp8_activations(torch.randn(3, 256, generator=generator))
    padded = cublas_block_operands(codes, scales, weight, scale_inv)
    assert [tuple(t.shape) for t in padded] == [(3, 512), (3, 4), (256, 512), (2, 4)]
    for original, wider in zip((codes, scales, weight, scale_inv), padded, strict=True):
        width = original.shape[-1]
        assert torch.equal(wider[:, :width].view(torch.uint8), original.view(torch.uint8))
    assert not padded[0][:, 256:].view(torch.uint8).any() and not padded[2][:, 256:].view(torch.uint8).any()
    assert (padded[1][:, 2:] == 1).all() and (padded[3][:, 2:] == 1).all()
    assert torch.equal(fp8_widened(*padded[:2])[:, 256:], torch.zeros(3, 256))
    four = [t.view(torch.uint8).repeat(1, 2).view(t.dtype) for t in (codes, scales, weight, scale_inv)]
    assert all(got is given for got, given in zip(cublas_block_operands(*four), four, strict=True))


def test_a_device_without_blockwise_fp8_is_refused_with_what_to_use():
    with pytest.raises(ValueError, match='needs torch\'s blockwise FP8 matmul .* use quantize = "int8"'):
        check_fp8_matmul("cpu")  # torch's CPU _scaled_mm takes tensor- and row-wise scales only


def test_fp8_models_quantize_what_int8_quantizes():
    """The same layers as int8 (the router, gates and DeltaNet's a/b projections stay float; the lm_head
    becomes int8), so the two settings' footprints differ only in the quantized layers' bytes."""
    from daemon.model.config import TextConfig
    from daemon.model.text_model import QwenModel
    from daemon.tools.real_shapes import shape_config

    config: TextConfig = shape_config("qwen3.6-35b-a3b", 4, vocab=1024)
    kinds = {}
    for method in ("int8", "fp8"):
        with torch.device("meta"):
            model = QwenModel(config, with_mtp=True)
            quantize_modules(model, Quantization(method))
        kinds[method] = {name: type(module).__name__ for name, module in model.named_modules()}
    swapped = {name for name, kind in kinds["int8"].items() if kind in ("Int8Linear", "QuantizedExperts")}
    assert swapped and all(kinds["fp8"][name] in ("Fp8Linear", "QuantizedExperts", "Int8Linear") for name in swapped)
    assert kinds["fp8"]["lm_head"] == "Int8Linear" and kinds["fp8"]["layers.0.mlp.gate"] == "Linear"
