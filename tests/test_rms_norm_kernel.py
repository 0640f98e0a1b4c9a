"""The float32 RMSNorm kernel (daemon/model/rms_norm.cpp) that RMSNorm takes on the CPU outside autograd.

Its result is held to the formula computed in float64: a sum of 576 squares in 16 float32 lanes of 36
terms then 4 pairwise adds is within 40 roundings (2^-24 each) of exact, the square root and reciprocal
halve and add one, and three products add three: 64 · 2^-24 relative to each output bounds all of it
with room, on any CPU (the kernel's order is fixed in its source, not chosen by a BLAS).
"""

import pytest
import torch

from daemon.model import cpu_kernels
from daemon.model.norms import RMSNorm

pytestmark = pytest.mark.skipif(cpu_kernels.unavailable() is not None,
                                reason=f"CPU kernels: {cpu_kernels.unavailable()}")

RELATIVE = 64 * 2**-24  # see the module docstring


def _norm(offset: float, width: int = 576) -> RMSNorm:
    norm = RMSNorm(width, 1e-6, offset)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(width, generator=torch.Generator().manual_seed(1)))
    return norm


def _formula(x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * (norm.offset + norm.weight.double())


@pytest.mark.parametrize("offset", [0.0, 1.0])  # Llama's plain scale, Qwen3.5/3.6's zero-centred one
def test_kernel_is_the_formula_and_each_row_its_own(offset):
    norm = _norm(offset)
    x = torch.randn(2, 5, 576, generator=torch.Generator().manual_seed(2)) * 4
    with torch.inference_mode():
        y = norm(x)
        rows = [norm(x[i:i + 1, j:j + 1]) for i in range(2) for j in range(5)]
    expected = _formula(x, norm)
    assert y.dtype == torch.float32 and ((y.double() - expected).abs() <= RELATIVE * expected.abs()).all()
    assert torch.equal(torch.cat(rows).reshape(2, 5, 576), y)  # a row never depends on the rows beside it


def test_module_takes_the_kernel_only_outside_autograd_and_on_strided_views():
    norm = _norm(1.0, width=64)
    x = torch.randn(3, 4, 128, generator=torch.Generator().manual_seed(3))[..., 32:96]  # a head's view
    with torch.inference_mode():
        kernel = norm(x)
        assert torch.equal(kernel, torch.ops.mtpchat_cpu.rms_norm(x.contiguous(), norm.weight, 1.0, norm.eps))
    reference = norm(x)  # grad enabled: torch's ops, which autograd differentiates
    reference.sum().backward()
    assert norm.weight.grad is not None and reference.requires_grad and not kernel.requires_grad
    expected = _formula(x, norm)
    for y in (kernel, reference.detach()):
        assert ((y.double() - expected).abs() <= RELATIVE * expected.abs()).all()


def test_kernel_refuses_what_it_does_not_compute():
    with pytest.raises(RuntimeError, match="float32 rows"):
        torch.ops.mtpchat_cpu.rms_norm(torch.randn(2, 8, dtype=torch.float64), torch.ones(8), 1.0, 1e-6)
    with pytest.raises(RuntimeError, match="float32 rows"):
        torch.ops.mtpchat_cpu.rms_norm(torch.randn(2, 8), torch.ones(4), 1.0, 1e-6)
