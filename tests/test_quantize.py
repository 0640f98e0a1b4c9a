"""Weight-only quantization: each quantized layer multiplies by exactly the weight it claims (its
dequantized reference), GGUF Q4_1 maps onto int4 without re-quantizing, the loader swaps the layers in,
and MTP decoding of a quantized model is token-identical to plain decoding of the same model.

Tolerances used below and why:
- Weights are compared exactly: `dequantized()` is recomputed here from codes and scales.
- A quantized matmul is compared with x @ dequantized().T where x is first rounded to bfloat16, as the
  kernel rounds it (daemon.model.quantized: the only dtype its CPU kernels vectorise). What remains is
  the kernel's bfloat16 output (a relative rounding of at most 2^-9) and the order of its float32 sums
  (at most in_features · 2^-24 of sum |x|·|w|); the bar is that sum with the first term doubled.
"""

import gguf
import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from daemon.engine.step_runner import compile_options
from daemon.model import quantized, quantized_layer
from daemon.model.linear import Linear
from daemon.model.quantized import (
    KERNEL_DTYPE,
    Int4Linear,
    Int8Linear,
    QuantizedExperts,
    int4_quantize,
    q4_1_to_int4,
)
from daemon.model.w4a8 import W4A8Linear
from daemon.serve.footprint import checkpoint_footprint
from daemon.tools.bandwidth import layer_bandwidth
from daemon.weights.gguf_convert import split_q4_1, split_q8_0, unpack_q4_1_codes
from daemon.weights.loader import load_model
from mtpchat.config import ModelSettings, Quantization
from mtpchat.protocol import MAX_DRAFT
from tests.helpers import decode, generation, random_ids

MODELS = ["qwen3.6-dense-tiny", "qwen3.6-moe-tiny"]
BF16_ROUNDING = 2.0**-9


def _layer(cls, weight: torch.Tensor, *args) -> torch.nn.Module:
    with torch.device("meta"):
        layer = cls(weight.shape[1], weight.shape[0], *args)
    layer.to_empty(device="cpu")
    layer.load(weight)
    return layer


@pytest.mark.parametrize("cls, rows, args", [(Int8Linear, 100, ()), (Int4Linear, 112, (32,)), (W4A8Linear, 112, (32,))])
def test_quantizing_in_row_blocks_gives_the_whole_matrixs_layer(monkeypatch, cls, rows, args):
    """Loading quantizes QUANTIZE_ROWS rows at a time (so its float32 copies stay small): the buffers are
    bit for bit those of quantizing the whole matrix at once, a last short block included."""
    weight = torch.randn(rows, 64, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    whole = _layer(cls, weight, *args)
    monkeypatch.setattr(quantized_layer, "QUANTIZE_ROWS", 64)  # the smallest block the int4 packing allows
    blocks = _layer(cls, weight, *args)
    for name, buffer in whole.named_buffers():
        assert torch.equal(buffer, dict(blocks.named_buffers())[name]), name


def _per_weight(per_group: torch.Tensor, group: int) -> torch.Tensor:
    return per_group.repeat_interleave(group, dim=1)


def _assert_matmul_matches(layer, weight: torch.Tensor, x: torch.Tensor) -> None:
    ref_weight = layer.dequantized()
    x_kernel = x.to(KERNEL_DTYPE).float()
    expected = x_kernel @ ref_weight.t()
    magnitude = x_kernel.abs() @ ref_weight.abs().t()
    bar = 2 * BF16_ROUNDING * expected.abs() + x.shape[-1] * 2.0**-24 * magnitude
    out = layer(x)
    assert out.dtype == x.dtype and out.shape == expected.shape
    assert ((out - expected).abs() <= bar).all()
    assert torch.equal(layer(x[:3]), out[:3])  # rows do not depend on how many are multiplied at once


def test_int8_is_symmetric_per_channel_and_its_matmul_uses_that_weight():
    weight = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    layer = _layer(Int8Linear, weight)
    scales = layer.scales.float()
    assert torch.equal(layer.dequantized(), layer.weight_int8.float() * scales[:, None])
    # the nearest point of each row's grid: within half a step of the float weight
    assert ((layer.dequantized() - weight).abs() <= scales[:, None] / 2 * (1 + 1e-6)).all()
    _assert_matmul_matches(layer, weight, torch.randn(8, 96))
    assert torch.equal(layer(torch.ones(2, 96), 16), layer(torch.ones(2, 96))[:, :16])  # a reduced draft vocabulary


@pytest.mark.parametrize("group", [32, 64])
def test_int4_groups_with_zero_points_and_its_matmul_uses_that_weight(group):
    weight = torch.randn(32, 128, generator=torch.Generator().manual_seed(1)) + 0.3
    codes, scales, zeros = int4_quantize(weight, group)
    layer = _layer(Int4Linear, weight, group)
    scale, zero = _per_weight(scales, group), _per_weight(zeros, group)
    assert torch.equal(layer.dequantized(), (codes.float() - 8) * scale + zero)
    # each weight within half a step of its group's grid; codes at the ends of a group's range can be
    # clamped by the bfloat16 rounding of scale and zero, adding up to 8 scale roundings and one of the zero
    bound = scale * (0.5 + 8 * BF16_ROUNDING) + zero.abs() * BF16_ROUNDING
    assert ((layer.dequantized() - weight).abs() <= bound).all()
    _assert_matmul_matches(layer, weight, torch.randn(8, 128))


def _q4_1_bytes(rows: int, cols: int, seed: int) -> np.ndarray:
    """A Q4_1 tensor as GGUF stores it: per block of 32, float16 d, float16 m, 16 bytes of nibbles."""
    rng = np.random.default_rng(seed)
    blocks = rows * cols // 32
    d = (rng.random(blocks) * 0.05 + 0.001).astype(np.float16)
    m = (rng.standard_normal(blocks) * 0.2).astype(np.float16)
    nibbles = rng.integers(0, 256, (blocks, 16), dtype=np.uint8)
    raw = np.concatenate([d.view(np.uint8).reshape(-1, 2), m.view(np.uint8).reshape(-1, 2), nibbles], axis=1)
    return raw.reshape(rows, cols // 32 * 20)


def test_q4_1_maps_onto_int4_group_32_exactly():
    rows, cols = 32, 128
    raw = _q4_1_bytes(rows, cols, seed=2)
    shipped = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1).astype(np.float32))
    codes, d, m = split_q4_1(raw)
    codes, scales, zeros = q4_1_to_int4(unpack_q4_1_codes(codes), d, m)
    # torch's kernel with float32 scales and zeros multiplies by exactly the shipped weights ...
    packed = torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    scales_and_zeros = torch.stack((scales, zeros), dim=-1).transpose(0, 1).contiguous()
    exact = torch._weight_int4pack_mm_for_cpu(torch.eye(cols), packed, 32, scales_and_zeros).t()
    assert torch.equal(exact, shipped)
    # ... and the layer keeps those codes, with scale and zero rounded to bfloat16 for its fast kernel
    with torch.device("meta"):
        layer = Int4Linear(cols, rows, 32)
    layer.to_empty(device="cpu")
    layer.load_codes(codes, scales, zeros)
    scale, zero = (_per_weight(t.to(KERNEL_DTYPE).float(), 32) for t in (scales, zeros))
    assert torch.equal(layer.dequantized(), (codes.float() - 8) * scale + zero)


def _q8_0_bytes(rows: int, cols: int, seed: int) -> np.ndarray:
    """Random Q8_0 blocks as GGUF stores them: float16 d, then 32 int8 codes (the full range -128..127)."""
    rng = np.random.default_rng(seed)
    d = (rng.random((rows, cols // 32, 1)) * 0.01 + 1e-4).astype(np.float16)
    q = rng.integers(-128, 128, (rows, cols // 32, 32), dtype=np.int8)
    return np.concatenate([d.view(np.uint8), q.view(np.uint8)], axis=-1).reshape(rows, cols // 32 * 34)


def test_q8_0_maps_onto_two_int4_halves_exactly():
    """Q8Linear holds Q8_0's codes as int4 halves (16·h + l): it multiplies by exactly d·q, with d
    rounded to bfloat16 as every kernel scale here; its first-outputs form (a draft vocabulary) gives
    the full product's first columns bit for bit."""
    rows, cols = 256, 128
    raw = _q8_0_bytes(rows, cols, seed=3)
    shipped = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0).astype(np.float32))
    codes, d = split_q8_0(raw)
    assert torch.equal(_per_weight(d.float(), 32) * codes.float(), shipped)
    with torch.device("meta"):
        layer = quantized.Q8Linear(cols, rows)
    layer.to_empty(device="cpu")
    layer.load_q8_0(codes, d)
    assert torch.equal(layer.dequantized(), _per_weight(d.to(KERNEL_DTYPE).float(), 32) * codes.float())
    x = torch.randn(3, cols, generator=torch.Generator().manual_seed(0))
    full = layer(x)
    assert torch.equal(layer(x, 128), full[:, :128]) and torch.equal(layer(x, 100), full[:, :100])
    reference = x.to(KERNEL_DTYPE).float() @ layer.dequantized().t()
    bound = (x.abs().to(KERNEL_DTYPE).float() @ layer.dequantized().abs().t()) * 2 * BF16_ROUNDING
    assert ((full - reference).abs() <= bound).all()


def test_a_draft_vocabularys_rows_compile_with_inductor():
    """The first-outputs form inside a compiled graph (the daemon's compiled MTP step asks the lm_head for
    its draft vocabulary): inductor's int4 lowering once failed on the scales copy made in the graph
    (quantized.leading_rows). Compiled with the daemon's options (scalar code where the CPU dispatches at
    AVX2, whose vector code torch 2.13 gets wrong: step_runner.compile_options), it equals eager bit for
    bit: the same kernel on the same inputs."""
    rows, cols = 256, 64
    codes, d = split_q8_0(_q8_0_bytes(rows, cols, seed=4))
    with torch.device("meta"):
        layer = quantized.Q8Linear(cols, rows)
    layer.to_empty(device="cpu")
    layer.load_q8_0(codes, d)

    def head(h: torch.Tensor, outputs: int) -> torch.Tensor:
        return layer(torch.nn.functional.silu(h), outputs) * 2

    x = torch.randn(1, 1, cols, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        compiled = torch.compile(head, fullgraph=True, dynamic=True, options=compile_options(torch.device("cpu")))
        for outputs in (128, 100):
            assert torch.equal(compiled(x, outputs), head(x, outputs)), outputs


def test_the_demos_q8_0_lm_head_is_kept_exactly(demo):
    """The converted demo keeps its Q8_0 embedding's blocks (gguf_codes.safetensors); quantized, its tied
    lm_head is a Q8Linear over them, which the fp32 model's lm_head equals but for bfloat16 scales."""
    model = load_model(demo, quantization=Quantization("int4"))
    assert isinstance(model.lm_head, quantized.Q8Linear) and model.lm_head.in_features == model.config.hidden_size
    assert layer_bandwidth(model, repeats=1)["lm_head"]["layers"] == 1  # the bench feeds it hidden-size rows
    float_head = load_model(demo).lm_head.weight
    relative = (model.lm_head.dequantized() - float_head).abs() / float_head.abs().clamp_min(1e-30)
    assert relative.max() <= 2.0**-8  # q exact, d rounded to bfloat16: 8 significant bits, unit roundoff 2^-8


def test_loading_with_quantize_swaps_in_quantized_layers_and_footprint_counts_them(tiny):
    path = tiny["qwen3.6-moe-tiny"]
    model = load_model(path, device="cpu", quantization=Quantization("int4", 32, "int8"))
    layer = model.layers[3]  # full attention
    assert isinstance(layer.self_attn.qkv_proj, Int4Linear)
    assert isinstance(model.layers[0].linear_attn.in_proj_qkv, Int4Linear)
    assert isinstance(layer.mlp.experts, QuantizedExperts)
    assert isinstance(layer.mlp.experts.down_proj.expert(0), Int4Linear)
    assert isinstance(layer.mlp.shared_expert.gate_up_proj, Int4Linear)
    # router, gates and DeltaNet's per-head projections stay in the compute dtype; lm_head is int8
    assert isinstance(layer.mlp.gate, Linear) and isinstance(layer.mlp.shared_expert_gate, Linear)
    assert isinstance(model.layers[0].linear_attn.in_proj_b, Linear)
    assert isinstance(model.lm_head, Int8Linear)
    assert isinstance(model.mtp.fc, Int8Linear)
    assert isinstance(model.mtp.layers[0].mlp.experts.gate_up_proj.expert(0), Int8Linear)
    float_model = load_model(path, device="cpu")
    # loaded values are the quantization of the checkpoint's weights
    assert torch.equal(layer.self_attn.qkv_proj.dequantized(),
                       _layer(type(layer.self_attn.qkv_proj), float_model.layers[3].self_attn.qkv_proj.weight,
                              32).dequantized())
    # the plan counts exactly the bytes the quantized layers save (the cache part is the same in both)
    planned = {q: _total(checkpoint_footprint(path, torch.float32, 64, q)[0])
               for q in (Quantization(), Quantization("int4", 32, "int8"))}
    held = {q: _held(m) for q, m in ((Quantization(), float_model), (Quantization("int4", 32, "int8"), model))}
    assert planned[Quantization()] - planned[Quantization("int4", 32, "int8")] == (
        held[Quantization()] - held[Quantization("int4", 32, "int8")])
    assert held[Quantization("int4", 32, "int8")] < held[Quantization()] / 2


def _total(footprint) -> int:
    return footprint.embed + sum(footprint.layers) + footprint.head


def _held(model) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("quantization", [Quantization("int8"), Quantization("int4"), Quantization("int4", 64, "none"),
                                          Quantization("fp8")], ids=["int8", "int4", "int4-g64-mtp-none", "fp8"])
@torch.inference_mode()
def test_mtp_decoding_of_a_quantized_model_equals_its_plain_decoding(tiny, name, quantization):
    model = load_model(tiny[name], device="cpu", quantization=quantization)
    prompt = random_ids(40, seed=5)[0].tolist()
    plain = decode(model, prompt, 16)
    for k, adaptive in [(k, False) for k in range(1, MAX_DRAFT + 1)] + [(MAX_DRAFT, True)]:
        run = generation(model, prompt, 16, draft_k=k, adaptive=adaptive)
        assert run.tokens() == plain, f"k={k}{' adaptive' if adaptive else ''}"
        assert run.stats.drafts > 0


@pytest.mark.parametrize("fields, message", [
    ({"quantize": "int3"}, "quantize must be one of 'none', 'int8', 'int4', 'fp8'"),
    ({"quantize": "int4", "quantize_group": 100}, "quantize_group must be one of 32, 64, 128"),
    ({"quantize": "int4", "quantize_group": 32.0}, "quantize_group must be one of"),
    ({"quantize_mtp": "fp4"}, "quantize_mtp must be one of"),
])
def test_bad_quantize_settings_fail_with_what_to_write(fields, message):
    with pytest.raises(ValueError, match=f"model 'm': {message}"):
        ModelSettings("m", "/ckpt", **fields)


def test_quantization_is_described_for_status():
    assert ModelSettings("m", "/ckpt").quantization.describe() == "none"
    assert Quantization("int4", 64, "none").describe() == "int4 (group 64), MTP head none"
    assert Quantization("int8").describe() == "int8"


def test_asking_for_another_quantization_adds_a_variant_of_the_model():
    from daemon.serve.registry import ModelRegistry
    from mtpchat.config import Config

    registry = ModelRegistry(Config({"m": ModelSettings("m", "/ckpt", quantize="int8", quantize_group=64)}, "m"))
    assert registry.entry("m") is registry.entry("m", quantize="int8") is registry.entries["m"]
    variant = registry.entry("m", quantize="int4")
    assert variant is registry.entry(None, quantize="int4") and variant.settings.name == "m@int4"
    assert variant.settings.quantization == Quantization("int4", 64) and not variant.settings.load_at_start
    assert variant.describe()["quantize"] == "int4 (group 64)"


@pytest.mark.parametrize("method", ["int8", "int4", "fp8"])
def test_a_verify_gives_each_position_the_bits_a_decode_step_gives_it(demo, method):
    """What makes MTP token-identical to plain decoding under quantization: the quantized layers round
    their inputs to bfloat16 (or FP8), so a last-bit difference between a multi-token verify and 1-token decode
    steps would become a visible one; the verify's attention runs row by row, as decode does."""
    model = load_model(demo, quantization=Quantization(method))
    prompt = torch.tensor([random_ids(20, seed=4, vocab=model.config.vocab_size).flatten().tolist()])
    verify_cache, decode_cache = model.new_cache(32), model.new_cache(32)
    with torch.inference_mode():
        model(prompt[:, :16], verify_cache, 0)
        model(prompt[:, :16], decode_cache, 0)
        together, _ = model(prompt[:, 16:], verify_cache, 16)
        one_by_one = torch.cat([model(prompt[:, i:i + 1], decode_cache, i)[0] for i in range(16, 20)], dim=1)
    assert torch.equal(together, one_by_one)


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("tokens", [1, 2, 5])
def test_experts_traced_form_equals_the_loop_bit_for_bit(method, tokens):
    """QuantizedExperts.slots (what a compiled step runs: one row per (token, choice), weights gathered by
    a device index) against the eager loop over the experts hit (rows routed to one expert multiplied
    together), with tokens sharing experts: the same bits, so compiled and eager decoding agree."""
    experts_n, hidden, intermediate, top_k = 8, 64, 32, 3
    generator = torch.Generator().manual_seed(tokens)
    with torch.device("meta"):
        experts = QuantizedExperts(experts_n, hidden, intermediate, method, 32)
    experts.to_empty(device="cpu")
    for kind, shape in (("gate_up_proj", (2 * intermediate, hidden)), ("down_proj", (hidden, intermediate))):
        experts.load(kind, torch.randn(experts_n, *shape, generator=generator))
    x = torch.randn(tokens, hidden, generator=generator)
    chosen = torch.stack([torch.randperm(4, generator=generator)[:top_k] for _ in range(tokens)])  # 4 of 8: shared
    weights = torch.rand(tokens, top_k, generator=generator)
    looped = experts(x, chosen, weights)
    assert torch.equal(experts.slots(x, chosen, weights), looped)
    # and both are each token's weighted sum of its experts' outputs, added in expert order
    expected = torch.cat([sum(experts.down_proj.expert(e)(torch.nn.functional.silu(g) * u) * w
                              for e, w in sorted(zip(chosen[n].tolist(), weights[n], strict=True))
                              for g, u in [experts.gate_up_proj.expert(e)(x[n:n + 1]).chunk(2, dim=-1)])
                          for n in range(tokens)])
    assert torch.equal(looped, expected)


@pytest.mark.parametrize("in_features, k_tiles", [(256, 8), (576, 4), (96, 2)])
def test_cuda_int4_layers_take_the_shapes_cudas_kernels_give(in_features, k_tiles):
    """No GPU here: on fake CUDA tensors (FakeTensorMode runs torch's shape functions of the CUDA ops), a
    layer laid out for CUDA packs a block of rows into its share of the layer's buffer and multiplies,
    plain and as one expert of a stack, with the shapes `_convert_weight_to_int4pack` and
    `_weight_int4pack_mm` give. Its values are checked on a GPU by scripts/device_check.py (quantized
    matmuls against dequantized references)."""
    rows, block = 128, 64
    with FakeTensorMode():  # (a fake CUDA tensor cannot be copied into here: packing is checked apart)
        layer = Int4Linear(in_features, rows, 32, kernels="cuda").to_empty(device="cuda")
        stacked = Int4Linear(in_features, 64, 32, experts=3, kernels="cuda").to_empty(device="cuda")
        packed = layer.pack(torch.empty(block, in_features, dtype=torch.uint8))  # codes come from the CPU
        assert packed.device.type == "cuda" and packed.shape == layer.packed.narrow(0, 0, block // 8).shape
        x = torch.empty(3, in_features, device="cuda")
        assert layer.k_tiles == k_tiles and layer.packed.device.type == "cuda"
        assert layer.packed.shape == (rows // 8, in_features // (16 * k_tiles), 32, k_tiles // 2)
        assert layer(x).shape == (3, rows)
        assert stacked(x, expert=torch.tensor(1, device="cuda")).shape == (3, 64)
        assert layer.dequantized().shape == (rows, in_features)
        cpu_packed = torch.empty(rows, in_features // 2, dtype=torch.uint8, device="cuda")
        with pytest.raises(RuntimeError):  # the shape functions do check: CPU-packed bytes are refused
            torch._weight_int4pack_mm(x.to(KERNEL_DTYPE), cpu_packed, 32, layer.scales_and_zeros)


def test_cuda_int8_product_by_blocks_is_the_dequantized_product():
    """The CUDA int8 path (F.linear on codes converted a block of rows at a time, then scaled) run here in
    float64, for blocks of 1 row, of 10 rows (the last one 7) and one block of all 37: each equals
    x @ (codes·scale)ᵀ up to float64 rounding of 48-term sums (bar: 1e-12 of sum |x|·|w|, ~100x that
    rounding; a block put in the wrong place or scaled by another row's scale is off by O(1))."""
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(-127, 128, (37, 48), generator=generator, dtype=torch.int8)
    scales = torch.rand(37, generator=generator, dtype=torch.float64)
    x = torch.randn(3, 48, generator=generator, dtype=torch.float64)
    weight = codes.double() * scales[:, None]
    for block_bytes in (48 * 8, 10 * 48 * 8, 1 << 20):
        out = quantized.int8_matmul_by_blocks(x, codes, scales, block_bytes)
        assert ((out - x @ weight.t()).abs() <= 1e-12 * (x.abs() @ weight.abs().t())).all()
    with FakeTensorMode():  # a layer on CUDA takes that path (shapes only: no GPU here)
        layer = Int8Linear(48, 40, experts=2).to_empty(device="cuda")
        assert layer(torch.empty(3, 48, device="cuda"), expert=torch.tensor(1, device="cuda")).shape == (3, 40)


def test_quantized_layers_take_one_kind_of_device():
    assert quantized.quantized_kernels({"cuda:0", "cuda:1"}) == "cuda"
    assert quantized.quantized_kernels({"cpu"}) == "cpu"
    with pytest.raises(ValueError, match=r"all of a model's parts on one kind \(asked for cpu, cuda:0\)"):
        quantized.quantized_kernels({"cpu", "cuda:0"})
