"""FP8 weights multiplied in FP8, as Qwen's FP8 releases are meant to run: the weight float8_e4m3fn with
one float32 scale per 128x128 block (w = fp8 · scale_inv, exactly as shipped), the activations quantized
on the fly to float8_e4m3fn with one scale per token and 128 inputs (the releases' "activation_scheme":
"dynamic"; DeepSeek-V3's recipe, which Qwen's `weight_block_size` [128, 128] follows).

On CUDA this is one `torch._scaled_mm` call with BlockWise1x128 scales for the activations and
BlockWise128x128 for the weight (cuBLAS's blockwise FP8, Hopper: compute capability 9.0, and a torch
built with CUDA ≥ 12.9). It halves bf16's bytes per token with the checkpoint's own rounding instead of
the int8 per-channel re-rounding a FP8 release otherwise gets (daemon.weights.prequantized). Whether the
device and torch build have the kernel is checked once when a model is placed (`check_fp8_matmul`), so
a GPU without it is refused with the reason at load, not in the middle of a reply.

On the CPU the same layer runs the reference form of that product: the activations quantized the same
way, both sides dequantized in float32, one F.linear. It is what the CUDA kernel is compared with
(scripts/device_check.py) and what the CPU tests run; it is slow (every weight is widened per call), so
on the CPU int8 is the fast choice for an FP8 release (measured below).

Rows are quantized independently (a scale per token), so a row's result does not depend on how many
rows are multiplied at once — what keeps MTP's (k+1)-row verify equal to 1-row decode steps here.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from daemon.model.linear import FEW_ROWS, linear
from daemon.model.quantized_layer import QuantizedLayer, row_blocks

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
FP8_BLOCK = 128  # weight rows and inputs per weight scale; inputs per activation scale
_TINY = torch.finfo(torch.float32).tiny  # the scale of an all-zero block (its codes are 0 whatever it is)


def _blocks(size: int) -> int:
    return math.ceil(size / FP8_BLOCK)


def _per_input(scales: torch.Tensor, inputs: int) -> torch.Tensor:
    """[..., ceil(K/128)] scales -> [..., K], each repeated over its 128 inputs (the last block partial)."""
    return scales.unsqueeze(-1).expand(*scales.shape, FP8_BLOCK).flatten(-2).narrow(-1, 0, inputs)


def fp8_block_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (codes float8_e4m3fn [N, K], scale_inv float32 [ceil(N/128), ceil(K/128)]),
    w ≈ codes · scale_inv of its block, each block scaled so its largest magnitude is FP8's maximum."""
    rows, cols = weight.shape
    weight = weight.float()
    padded = F.pad(weight.abs(), (0, _blocks(cols) * FP8_BLOCK - cols, 0, _blocks(rows) * FP8_BLOCK - rows))
    amax = padded.reshape(_blocks(rows), FP8_BLOCK, _blocks(cols), FP8_BLOCK).amax(dim=(1, 3))
    scale_inv = (amax / FP8_MAX).clamp_min(_TINY)
    per_weight = _per_input(scale_inv, cols).repeat_interleave(FP8_BLOCK, dim=0)[:rows]
    return (weight / per_weight).to(FP8), scale_inv


def fp8_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (codes float8_e4m3fn [M, K], scales float32 [M, ceil(K/128)]): x ≈ codes · scale, one
    scale per row and 128 inputs (the row's block maximum maps to FP8's maximum)."""
    x = x.float()
    cols = x.shape[-1]
    padded = F.pad(x.abs(), (0, _blocks(cols) * FP8_BLOCK - cols))
    scales = (padded.reshape(x.shape[0], -1, FP8_BLOCK).amax(dim=-1) / FP8_MAX).clamp_min(_TINY)
    return (x / _per_input(scales, cols)).to(FP8), scales


def fp8_widened(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """What fp8_activations' codes and scales stand for, [M, K] in float32 (exact)."""
    return codes.float() * _per_input(scales, codes.shape[-1])


def fp8_weight(weight: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """What FP8 weight codes [..., N, K] and block scales stand for, [..., N, K] in float32 (exact)."""
    per_row = _per_input(scale_inv, weight.shape[-1]).repeat_interleave(FP8_BLOCK, dim=-2)
    return weight.float() * per_row[..., :weight.shape[-2], :]


def fp8_reference_mm(codes: torch.Tensor, scales: torch.Tensor, weight: torch.Tensor,
                     scale_inv: torch.Tensor) -> torch.Tensor:
    """What the blockwise kernel computes, in float32: (codes·scales) @ (weight·scale_inv)ᵀ -> [M, N], row
    by row up to a verify's rows: float32 products of several rows round differently from one row's, and
    a last-bit difference can move an FP8 code in the next layer, so a verify's rows would drift from
    decode steps' (MTP)."""
    rows, weight = fp8_widened(codes, scales), fp8_weight(weight, scale_inv)
    if rows.shape[0] > FEW_ROWS:  # a prefill: no decode step computes these rows again
        return linear(rows, weight)
    return torch.cat([linear(rows[i:i + 1], weight) for i in range(rows.shape[0])])


CUBLAS_SCALE_BLOCKS = 4  # cuBLAS takes a 128x128-scaled operand's scales with K/128 rounded up to this


def cublas_block_operands(codes: torch.Tensor, scales: torch.Tensor, weight: torch.Tensor,
                          scale_inv: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The operands with K padded to whole groups of 4 blocks (512 inputs): cuBLAS reads the weight's
    scales as [L4, N/128] with L4 = K/128 rounded up to a multiple of 4 (its blockwise-scaling docs; newer
    torch checks that layout), while torch 2.11's `_scaled_mm` passes [K/128, N/128] as it is: the likely
    reason 2 blocks (the first device check's 256 inputs) drew CUBLAS_STATUS_NOT_SUPPORTED on an H200. Padded
    inputs have zero codes (the byte 0 is +0.0 in float8_e4m3fn) under scales of 1, so they add nothing.
    Every Qwen3.6 matrix has a multiple of 4 blocks and is returned as it is."""
    missing = -scales.shape[-1] % CUBLAS_SCALE_BLOCKS
    if not missing:
        return codes, scales, weight, scale_inv
    codes, weight = (F.pad(t.view(torch.uint8), (0, missing * FP8_BLOCK)).view(FP8) for t in (codes, weight))
    scales, scale_inv = (F.pad(t, (0, missing), value=1.0) for t in (scales, scale_inv))
    return codes, scales, weight, scale_inv


def fp8_cuda_mm(codes: torch.Tensor, scales: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor,
                out_dtype: torch.dtype) -> torch.Tensor:
    """The same product with cuBLAS's blockwise FP8 kernel: the weight [N, K] row-major is the column-major
    [K, N] operand it takes; the activation scales outer-dim-major ([M, K/128] with stride (1, M)), the
    weight's transposed to [K/128, N/128], K in whole groups of 4 blocks (`cublas_block_operands`)."""
    codes, scales, weight, scale_inv = cublas_block_operands(codes, scales, weight, scale_inv)
    outer_major = scales.t().clone(memory_format=torch.contiguous_format).t()
    return torch._scaled_mm(codes, weight.t(), scale_a=outer_major, scale_b=scale_inv.t(), out_dtype=out_dtype)


class Fp8Linear(QuantizedLayer):
    """A bias-free linear layer with float8_e4m3fn weights and a scale per 128x128 block (or `experts` of
    them), multiplied on `kernels`: "cuda" (cuBLAS's blockwise FP8) or "cpu" (the float32 reference)."""

    def __init__(self, in_features: int, out_features: int, experts: int = 0, kernels: str = "cpu"):
        super().__init__()
        self.in_features, self.out_features, self.experts, self.kernels = in_features, out_features, experts, kernels
        lead = (experts,) if experts else ()
        self.register_buffer("weight_fp8", torch.empty(*lead, out_features, in_features, dtype=FP8))
        self.register_buffer("scale_inv", torch.empty(*lead, _blocks(out_features), _blocks(in_features)))

    @property
    def device(self) -> torch.device:
        return self.scale_inv.device

    @staticmethod
    def fits(in_features: int, out_features: int, kernels: str = "cpu") -> bool:
        """cuBLAS's FP8 wants dimensions in multiples of 16; whole 128-input blocks are what it is known to
        take (every Qwen3.6 matrix has them). The reference takes any shape."""
        return kernels != "cuda" or (in_features % FP8_BLOCK == 0 and out_features % 16 == 0)

    def load(self, weight: torch.Tensor) -> None:
        for start, block in row_blocks(weight):
            self.load_codes(*fp8_block_quantize(block), start)

    def load_codes(self, codes: torch.Tensor, scale_inv: torch.Tensor, start: int = 0) -> None:
        """codes float8_e4m3fn [rows, in] and scale_inv [ceil(rows/128), ceil(in/128)] for the rows from
        `start` on (a multiple of 128: whole scale blocks)."""
        self.weight_fp8.narrow(0, start, codes.shape[0]).copy_(codes)
        self.scale_inv.narrow(0, start // FP8_BLOCK, scale_inv.shape[0]).copy_(scale_inv)

    def forward(self, x: torch.Tensor, outputs: int | None = None,
                expert: int | torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in] -> [..., out] (only the first `outputs` features when given), in x's dtype; a
        stacked layer multiplies by `expert`'s matrix."""
        weight, scale_inv = self.picked(expert, self.weight_fp8, self.scale_inv)
        if outputs is not None:
            weight, scale_inv = weight.narrow(0, 0, outputs), scale_inv.narrow(0, 0, _blocks(outputs))
        codes, scales = fp8_activations(x.reshape(-1, self.in_features))
        if self.kernels == "cuda":
            out = fp8_cuda_mm(codes, scales, weight, scale_inv, x.dtype)
        else:
            out = fp8_reference_mm(codes, scales, weight, scale_inv)
        return out.to(x.dtype).reshape(*x.shape[:-1], out.shape[-1])

    def dequantized(self) -> torch.Tensor:
        """The weight, [out, in] in float32 (exact: codes · scale_inv)."""
        return fp8_weight(self.weight_fp8, self.scale_inv)


def check_fp8_matmul(device: torch.device | str) -> None:
    """Raise ValueError, with the reason, where `device` cannot run Fp8Linear's CUDA kernel: small
    blockwise products (1 and 3 rows; 2 and 4 blocks of inputs) on the device against the reference of
    the same codes."""
    for blocks in (2, 4):  # padded (see cublas_block_operands) and as every Qwen3.6 matrix is
        _check_fp8_product(device, blocks)


def _check_fp8_product(device: torch.device | str, blocks: int) -> None:
    generator = torch.Generator().manual_seed(0)
    steps = torch.arange(blocks, dtype=torch.float32)  # blocks far apart in scale: a misread layout shows
    spread = 8.0 ** torch.stack((steps % 4, (steps + 2) % 4))
    weight, scale_inv = fp8_block_quantize(torch.randn(256, blocks * FP8_BLOCK, generator=generator)
                                           * spread.repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1))
    x = torch.randn(3, blocks * FP8_BLOCK, generator=generator) * spread[0].repeat_interleave(FP8_BLOCK)
    codes, scales = fp8_activations(x)
    expected = fp8_reference_mm(codes, scales, weight, scale_inv)
    on = [t.to(device) for t in (codes, scales, weight, scale_inv)]
    try:
        got = torch.cat([fp8_cuda_mm(on[0][:1], on[1][:1], *on[2:], torch.float32),
                         fp8_cuda_mm(on[0], on[1], *on[2:], torch.float32)[1:]]).cpu()
    except (RuntimeError, ValueError, NotImplementedError) as exc:  # torch raises each, by build and device
        raise ValueError(f"quantize = \"fp8\" needs torch's blockwise FP8 matmul (compute capability 9.0 and a "
                         f"torch built with CUDA ≥ 12.9), which {device} lacks ({str(exc).splitlines()[0]}); "
                         "use quantize = \"int8\", which loads an FP8 release too") from None
    # Products of FP8 codes are exact; Hopper's FP8 tensor cores accumulate with ~14 bits (DeepSeek-V3
    # report) before cuBLAS promotes each 128-input block to float32, so 128 · 2^-13 of the products'
    # magnitude bounds an honest difference; a misread scale layout is off by the blocks' factors of 8.
    magnitude = fp8_reference_mm(codes.float().abs(), scales, weight.float().abs(), scale_inv)
    if not ((got - expected).abs() <= 2.0**-6 * magnitude).all():
        raise ValueError(f"quantize = \"fp8\": the blockwise FP8 matmul on {device} does not match its reference "
                         f"(largest difference {(got - expected).abs().max().item():.3g}); use quantize = \"int8\"")
