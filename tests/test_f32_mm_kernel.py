"""The float32 few-rows product (daemon/model/f32_mm.cpp) that `linear` takes on the CPU outside autograd.

Held to the product computed in float64: each output sums K rounded products in 16 lanes of K/16 terms,
then 4 pairwise adds, so it lies within (K/16 + 4 + 1) roundings of 2^-24 times the sum of the products'
magnitudes; K/16 + 8 of them bounds it with room, on any CPU (the order is fixed in the source, not
chosen by a BLAS). Rows and threads are held to exact equality: that is what keeps a verify's rows
rounding as decode steps do.
"""

import pytest
import torch

from daemon.model import cpu_kernels
from daemon.model.linear import Linear, linear
from daemon.model.mlp import DenseMLP

pytestmark = pytest.mark.skipif(cpu_kernels.unavailable() is not None,
                                reason=f"CPU kernels: {cpu_kernels.unavailable()}")


def _inputs(rows: int, n: int = 96, k: int = 320, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)


def _within_bound(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> bool:
    exact = x.double() @ w.double().T
    magnitude = x.double().abs() @ w.double().abs().T
    return bool(((y.double() - exact).abs() <= (w.shape[1] // 16 + 8) * 2**-24 * magnitude).all())


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8])
def test_kernel_is_the_product_and_a_row_the_same_alone(rows):
    x, w = _inputs(rows)
    y = torch.ops.mtpchat_cpu.f32_mm(x, w)
    assert y.shape == (rows, 96) and _within_bound(y, x, w)
    for i in range(rows):
        assert torch.equal(torch.ops.mtpchat_cpu.f32_mm(x[i:i + 1], w), y[i:i + 1])


def test_kernel_result_does_not_depend_on_the_thread_count():
    x, w = _inputs(3, n=1024)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = torch.ops.mtpchat_cpu.f32_mm(x, w)
        torch.set_num_threads(2)
        assert torch.equal(torch.ops.mtpchat_cpu.f32_mm(x, w), alone)
    finally:
        torch.set_num_threads(threads)


def test_linear_takes_the_kernel_only_outside_autograd_and_where_the_shape_fits():
    x, w = _inputs(3)
    x = x.reshape(1, 3, 320)
    with torch.inference_mode():
        assert torch.equal(linear(x, w), torch.ops.mtpchat_cpu.f32_mm(x[0], w)[None])
        odd_width = linear(x[..., :300], w[:, :300])  # 300 inputs, which the kernel refuses: torch's product
        assert _within_bound(odd_width[0], x[0, :, :300], w[:, :300])
    weight = w.clone().requires_grad_()
    y = linear(x, weight)  # autograd: torch's product, differentiable
    y.sum().backward()
    assert weight.grad is not None and _within_bound(y.detach()[0], x[0], w)


def test_kernel_refuses_what_it_does_not_compute():
    x, w = _inputs(2)
    for bad_x, bad_w in ((x[:, :300], w[:, :300]), (x, w.t().contiguous().t()), (x.double(), w)):
        with pytest.raises(RuntimeError, match="f32_mm: float32 rows"):
            torch.ops.mtpchat_cpu.f32_mm(bad_x, bad_w)


@pytest.mark.parametrize("width", [320, 300])  # the kernel's shape, and one it refuses (torch's product)
def test_rows_alone_layer_rounds_every_row_as_alone(width):
    layer = Linear(width, 96)
    x = torch.randn(1, 5, width, generator=torch.Generator().manual_seed(4))
    layer.rows_alone = True
    with torch.inference_mode():
        together = layer(x)
        for i in range(5):
            assert torch.equal(together[:, i:i + 1], layer(x[:, i:i + 1]))


@pytest.mark.parametrize("rows", [1, 3, 5])
def test_mlp_rows_is_the_modules_ops_in_one_call(rows, monkeypatch):
    """The dense MLP's one call gives the bits of the module's own steps (two products, silu, mul), and the
    module takes it for a few rows outside autograd only."""
    torch.manual_seed(0)
    mlp = DenseMLP(320, 48)
    x = torch.randn(1, rows, 320, generator=torch.Generator().manual_seed(rows))
    with torch.inference_mode():
        gate, up = linear(x, mlp.gate_up_proj.weight).chunk(2, dim=-1)
        steps = linear(torch.nn.functional.silu(gate) * up, mlp.down_proj.weight)
        fused = torch.ops.mtpchat_cpu.mlp_rows(x, mlp.gate_up_proj.weight, mlp.down_proj.weight)
        assert fused.shape == (1, rows, 320) and torch.equal(fused, steps)
        with pytest.raises(RuntimeError, match="mlp_rows: gate_up"):
            torch.ops.mtpchat_cpu.mlp_rows(x, mlp.gate_up_proj.weight[:80], mlp.down_proj.weight)
    calls = []
    kernel = torch.ops.mtpchat_cpu.mlp_rows
    monkeypatch.setattr(torch.ops.mtpchat_cpu, "mlp_rows", lambda *args: calls.append(len(args)) or kernel(*args))
    with torch.inference_mode():
        assert torch.equal(mlp(x), steps) and calls == [3]
        mlp(torch.randn(1, 9, 320))  # more rows than a verify: the module's own steps
    assert calls == [3]
    # autograd: the module's own steps through torch's products, differentiable. They sum in another order
    # (blocked by the CPU's BLAS), so float32 roundings apart: outputs here are at most 0.34 and the two
    # differ by at most 2.1e-7 on this machine; 1e-5 (~340 ulp at 0.34) leaves room for other CPUs' blocking
    y = mlp(x)
    y.sum().backward()
    assert calls == [3] and mlp.down_proj.weight.grad is not None
    assert torch.allclose(y.detach(), steps, rtol=0, atol=1e-5)
