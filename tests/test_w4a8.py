"""The int4 / Q8_0 CPU kernel with int8 activations (daemon.model.w4a8): its SIMD path against its
scalar path, both against the formula in float64, rows and threads that never change a row's bits,
the layers' layouts against the weights they stand for, and where the model takes them.

Tolerances and why:
- SIMD against scalar, a row alone against the same row among others, 1 thread against 2: exact — the
  integer sums are exact and every path does the same float32 operations in the same order.
- The kernel against the formula in float64 (the same bfloat16 and two levels of int8 activation
  codes, which the test derives with the kernel's float32 operations): per block, two scale products,
  three fused multiply-adds and the float32 sums of the activations each round once, so the error stays
  below 8·blocks·2^-24 of Σ over blocks of the terms' magnitudes (Σ_levels |d·dx·Σq·xq| + |m·s|, and
  |m|·Σ|x| for Q4_1's float sum: the classic float32 summation bound, with room); a misread code, scale,
  level or block is off by whole terms.
- Dequantized weights are exact: d·q is a float16 times at most 8 bits (exact in float32), plus m once,
  the same float32 operation as the reference.
"""

import platform
import subprocess
import sys

import pytest
import torch

from daemon.model import cpu_kernels
from daemon.model.config import TextConfig
from daemon.model.quantized import Int4Linear, int4_quantize, q4_1_to_int4, quantize_modules
from daemon.model.text_model import QwenModel
from daemon.model.w4a8 import BLOCK, TILE, W4A8Linear, W4A8Q8Linear, pack_q4, pack_q8, tiled
from daemon.weights.loader import load_model
from mtpchat.config import Quantization

pytestmark = pytest.mark.skipif(cpu_kernels.unavailable() is not None,
                                reason=f"CPU kernels: {cpu_kernels.unavailable()}")


def _q4_1(rows: int, cols: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (rows, cols), generator=g, dtype=torch.uint8)
    d = (torch.rand(rows, cols // BLOCK, generator=g) * 0.02 + 1e-3).half()
    m = (-8 * d.float() + torch.randn(rows, cols // BLOCK, generator=g) * 1e-2).half()
    return codes, d, m


def _activations(x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The kernel's rounding of x to bfloat16, then to two int8 levels per block of 32 (the second for
    what the first leaves), with its float32 operations: [(codes, dx)] per level."""
    rest = x.bfloat16().float().reshape(x.shape[0], -1, BLOCK)
    levels = []
    for _ in range(2):
        amax = rest.abs().amax(dim=-1, keepdim=True)
        inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, 0.0)  # `127.0 / t` is 127·(1/t) in torch
        codes, dx = (rest * inv).round(), amax / 127.0
        rest = rest - dx * codes
        levels.append((codes, dx))
    return levels


def _formula(x: torch.Tensor, codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor, q8: bool = False):
    """y and the bound's scale, in float64: Σ_b Σ_levels d·dx·Σ q·xq + m·s, where s = Σx (Q4_1) or
    -128·Σ_levels dx·Σxq (Q8_0's stored codes q + 128, m = d)."""
    q = codes.double().reshape(codes.shape[0], -1, BLOCK)
    total = magnitude = 0
    sums = 0
    for xq, dx in _activations(x):
        scaled = torch.einsum("rbi,nbi->rnb", xq.double(), q) * d.double()[None] * dx.double().squeeze(-1)[:, None]
        total, magnitude = total + scaled, magnitude + scaled.abs()
        sums = sums + (-128 * dx.double().squeeze(-1) * xq.double().sum(-1) if q8 else 0)
    if not q8:
        sums = x.bfloat16().double().reshape(x.shape[0], -1, BLOCK).sum(-1)
        absolute = x.bfloat16().double().abs().reshape(x.shape[0], -1, BLOCK).sum(-1)
        magnitude = magnitude + m.double().abs()[None] * absolute[:, None]
    offsets = m.double()[None] * sums[:, None]
    return (total + offsets).sum(-1), (magnitude + offsets.abs()).sum(-1)


def _q4(x, codes, d, m, tiles=None, simd=True):
    tiles = codes.shape[0] // TILE if tiles is None else tiles
    return torch.ops.mtpchat_w4a8.q4_mm(x, pack_q4(codes).contiguous(), tiled(d).contiguous(),
                                        tiled(m).contiguous(), tiles, simd)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9])
def test_q4_kernel_is_the_formula_and_its_simd_path_the_scalar_path_bit_for_bit(rows):
    codes, d, m = _q4_1(96, 320, seed=rows)
    x = torch.randn(rows, 320, generator=torch.Generator().manual_seed(10 + rows))
    y = _q4(x, codes, d, m)
    assert torch.equal(y, _q4(x, codes, d, m, simd=False))
    expected, magnitude = _formula(x, codes, d, m)
    assert ((y.double() - expected).abs() <= 8 * (320 // BLOCK) * 2**-24 * magnitude).all()
    # and the two levels carry each bfloat16 activation to within 2^-15 of its block's largest (half the
    # second level's step, 2^-8·2^-7 of it), so against the exact product of the bfloat16 rows:
    weight = codes.double() * d.double().repeat_interleave(BLOCK, 1) + m.double().repeat_interleave(BLOCK, 1)
    blocks = x.bfloat16().double().reshape(rows, -1, BLOCK)
    step = (blocks.abs().amax(-1, keepdim=True) * 2**-15).expand_as(blocks).reshape(rows, -1)
    exact = x.bfloat16().double() @ weight.t()
    assert ((y.double() - exact).abs() <= step @ weight.abs().t() + 8 * (320 // BLOCK) * 2**-24 * magnitude).all()


def test_a_rows_result_does_not_depend_on_its_neighbours_or_the_thread_count():
    codes, d, m = _q4_1(128, 256, seed=1)
    x = torch.randn(7, 256, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = torch.cat([_q4(x[i:i + 1], codes, d, m) for i in range(7)])
        torch.set_num_threads(2)
        together = _q4(x, codes, d, m)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, together)


def test_leading_tiles_only_are_multiplied_when_fewer_outputs_are_asked():
    codes, d, m = _q4_1(64, 128, seed=3)
    x = torch.randn(2, 128, generator=torch.Generator().manual_seed(4))
    assert torch.equal(_q4(x, codes, d, m, tiles=2), _q4(x, codes, d, m)[:, :2 * TILE])


def test_q8_kernel_is_q8_0_times_int8_activations_on_both_paths():
    g = torch.Generator().manual_seed(5)
    codes = torch.randint(-127, 128, (48, 192), generator=g, dtype=torch.int8)
    d = (torch.rand(48, 192 // BLOCK, generator=g) * 0.01 + 1e-3).half()
    x = torch.randn(3, 192, generator=g)
    packed, scales = pack_q8(codes).contiguous(), tiled(d).contiguous()
    y = torch.ops.mtpchat_w4a8.q8_mm(x, packed, scales, scales, 3, True)
    assert torch.equal(y, torch.ops.mtpchat_w4a8.q8_mm(x, packed, scales, scales, 3, False))
    expected, magnitude = _formula(x, (codes.to(torch.int16) + 128).to(torch.uint8), d, d, q8=True)
    assert ((y.double() - expected).abs() <= 8 * (192 // BLOCK) * 2**-24 * magnitude).all()


AVX2_CHECK = """
import torch
from daemon.model import cpu_kernels, w4a8
cpu_kernels.load_kernels("haswell", cpu_kernels.SOURCES[:1])  # w4a8.cpp alone
assert cpu_kernels.simd_path() == "avx2", cpu_kernels.simd_path()
g = torch.Generator().manual_seed(0)
for n, k, rows in [(96, 320, 1), (96, 320, 5), (48, 576, 3)]:
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    q8 = torch.randint(-128, 128, (n, k), generator=g).to(torch.int8)
    d = (torch.rand(n, k // 32, generator=g) * 0.02 + 1e-3).half()
    m = (torch.randn(n, k // 32, generator=g) * 1e-2).half()
    x = torch.randn(rows, k, generator=g)
    d, m = w4a8.tiled(d).contiguous(), w4a8.tiled(m).contiguous()
    for op, packed, offsets in ((torch.ops.mtpchat_w4a8.q4_mm, w4a8.pack_q4(codes), m),
                                (torch.ops.mtpchat_w4a8.q8_mm, w4a8.pack_q8(q8), d)):
        args = (x, packed.contiguous(), d, offsets, n // 16)
        assert torch.equal(op(*args, True), op(*args, False)), (op, n, k, rows)
print("ok")
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the AVX2 path is x86's")
def test_the_avx2_path_gives_the_scalar_paths_bits_too():
    """This machine's build may take the AVX-512 path: an AVX2 build (-march=haswell) in a process of its
    own (the op library's name is the same) holds the AVX2 path to the scalar one, Q8_0's -128 included."""
    result = subprocess.run([sys.executable, "-c", AVX2_CHECK], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def _per_input(per_block: torch.Tensor) -> torch.Tensor:
    """[rows, K/32] -> [rows, K] float32, each block's value over its 32 inputs (the reference's own)."""
    return per_block.float().repeat_interleave(BLOCK, dim=1)


def _layer(cls, *args):
    with torch.device("meta"):
        layer = cls(*args)
    return layer.to_empty(device="cpu")


def test_layers_hold_q4_1_and_q8_0_blocks_exactly():
    codes, d, m = _q4_1(64, 96, seed=6)
    layer = _layer(W4A8Linear, 96, 64, BLOCK)
    layer.load_codes(*q4_1_to_int4(codes, d, m))
    assert torch.equal(layer.dequantized(), codes.float() * _per_input(d) + _per_input(m))
    q8 = torch.randint(-127, 128, (32, 96), dtype=torch.int8)
    head = _layer(W4A8Q8Linear, 96, 32)
    head.load_q8_0(q8, d[:32])
    assert torch.equal(head.dequantized(), q8.float() * _per_input(d[:32]))
    x = torch.randn(2, 96)
    assert torch.equal(head(x, outputs=20), head(x)[:, :20])


def test_quantizing_a_float_weight_loads_torchs_int4_form():
    weight = torch.randn(32, 64)
    layer, reference = _layer(W4A8Linear, 64, 32, BLOCK), _layer(Int4Linear, 64, 32, BLOCK)
    layer.load(weight)
    reference.load(weight)
    codes, scales, zeros = int4_quantize(weight, BLOCK)
    # the same codes; d and m are the bfloat16 scale and zero - 8·scale held in float16
    expected = codes.float() * _per_input(scales.half()) + _per_input((zeros - 8 * scales).half())
    assert torch.equal(layer.dequantized(), expected)
    # against torch's form only m's float16 rounding differs: half a float16 step of |m| (2^-11 of it,
    # |m| = a group's minimum, at most max|w|), with room
    assert (layer.dequantized() - reference.dequantized()).abs().max() <= 2**-10 * weight.abs().max()


def test_stacked_experts_by_device_index_equal_by_python_index_and_compile():
    layer = _layer(W4A8Linear, 64, 32, BLOCK, 3)
    for e in range(3):
        layer.expert(e).load(torch.randn(32, 64, generator=torch.Generator().manual_seed(e)))
    x = torch.randn(1, 64)
    eager = layer(x, expert=2)
    assert torch.equal(layer(x, expert=torch.tensor(2)), eager)
    compiled = torch.compile(lambda x, e: layer(x, expert=e), fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x, torch.tensor(2)), eager)


def test_the_model_takes_the_kernel_for_int4_group_32_on_the_cpu_only(tiny, monkeypatch):
    def kinds(group: int) -> set[type]:
        with torch.device("meta"):
            model = QwenModel(TextConfig.from_checkpoint(tiny["qwen3.6-dense-tiny"]), with_mtp=True)
            quantize_modules(model, Quantization(method="int4", group=group))
        return {type(module) for module in model.modules() if isinstance(module, Int4Linear)}

    assert kinds(32) == {W4A8Linear} and kinds(64) == {Int4Linear}
    monkeypatch.setenv("MTPCHAT_W4A8", "0")
    assert kinds(32) == {Int4Linear}


def test_the_demos_int4_model_runs_on_it_with_its_shipped_blocks(demo):
    model = load_model(demo, device="cpu", quantization=Quantization(method="int4", group=32))
    assert isinstance(model.lm_head, W4A8Q8Linear)
    layers = [m for m in model.modules() if isinstance(m, Int4Linear) and m is not model.lm_head]
    assert layers and all(isinstance(m, W4A8Linear) for m in layers)
