"""int4 (group 32) and the demo's Q8_0 lm_head on the CPU by this project's own kernel (w4a8.cpp), which
multiplies integer codes by integer codes: torch's weight-only int4 kernel is compute-bound at batch 1
on the CPU.

torch's `_weight_int4pack_mm_for_cpu` widens every 4-bit code to a float and multiplies it by the
bfloat16 activation: several vector instructions per weight, so a decode step's weight layers ran at
10-14 GB/s of int4 on one core, bound by arithmetic, not memory. Here each block of 32 activations is
written as two int8 levels, x ≈ dx₁·xq₁ + dx₂·xq₂ (dx = amax/127 of the block, then of what the first
level leaves), so a block's dot product is exact integer multiply-adds, 64 a instruction with AVX-512
VNNI (`vpdpbusd`, 16 output rows a vector), twice. llama.cpp rounds activations to one int8 level
(Q8_1); one level cost the demo 92.2% top-1 agreement with the fp32 model (mean KL 0.016 nats), the
second level carries each activation to 2^-15 of its block's largest, finer than the bfloat16 torch's
kernel takes (99.5% and 0.00009 nats against torch's 98.3% and 0.00077; README "Quality"). Activations
are rounded to bfloat16 first, as torch's kernels take them (w4a8.cpp says why), and the block's float
sum multiplies the Q4_1 offset m.

Measured at the demo's shapes on an Intel Xeon with AMX (Sapphire Rapids), one thread, median of 7×300
calls (/tmp driver), µs, this kernel against torch's: 960x576 16.1 vs 29.7 for one row, 29.0 vs 46.8
for three; 3072x576 38.2 vs 93.0, 74.4 vs 147.7; 576x1536 23.2 vs 46.5, 50.3 vs 73.9; the 49152x576
Q8_0 head 790 vs 1573 (torch's as Q8Linear: int4 over the input taken twice).

Weights keep their blocks as the checkpoint has them: Q4_1 codes 0..15 with float16 d and m
(w = d·q + m: the demo's shipped Q4_1 exactly, where torch's form rounds d and m to bfloat16), and the
Q8_0 lm_head's int8 codes with float16 d exactly. A row's result is the same whatever rows are
multiplied with it and whatever the thread count (each output is one lane's own sum, in block order),
so MTP output stays identical to plain decoding; the kernel's AVX-512, AVX2 and scalar paths compute
the same operations in the same order, and the tests hold the SIMD path to the scalar one bit for bit.

The kernel is built with the project's other CPU kernels (daemon/model/cpu_kernels.py). Where they
cannot be built (no compiler) or `MTPCHAT_W4A8=0`, the layers stay on torch's kernels
(daemon.model.quantized), and `cpu_kernels.unavailable()` says why.
"""

from __future__ import annotations

import os

import torch

from daemon.model.cpu_kernels import TILE, unavailable
from daemon.model.quantized import Int4Linear, Q8Linear
from daemon.model.quantized_layer import QuantizedLayer, row_blocks

BLOCK = 32  # inputs per block: the group it takes; out_features must be a multiple of TILE


def enabled() -> bool:
    """Whether int4 layers on the CPU should take this kernel (`MTPCHAT_W4A8=0` turns it off)."""
    return os.environ.get("MTPCHAT_W4A8", "1") != "0" and unavailable() is None


def tiled(per_block: torch.Tensor) -> torch.Tensor:
    """[rows, K/32] per-block values -> [rows/16, K/32, 16] float16, a tile's 16 rows side by side."""
    rows, blocks = per_block.shape
    return per_block.to(torch.float16).reshape(rows // TILE, TILE, blocks).transpose(1, 2)


def per_input(tiles: torch.Tensor) -> torch.Tensor:
    """`tiled`'s inverse, widened: [rows/16, K/32, 16] -> [rows, K] float32, each block's value repeated
    over its 32 inputs."""
    per_block = tiles.transpose(1, 2).reshape(tiles.shape[0] * TILE, tiles.shape[1])
    return per_block.float().repeat_interleave(BLOCK, dim=1)


def pack_q4(codes: torch.Tensor) -> torch.Tensor:
    """codes 0..15 [rows, K] -> [rows/16, K/8, 16, 4] bytes: in each 8-input group p, byte j of a row holds
    input 8p+j in its low nibble and 8p+4+j in its high one."""
    rows, cols = codes.shape
    groups = codes.to(torch.uint8).reshape(rows // TILE, TILE, cols // 8, 2, 4)
    return (groups[:, :, :, 0] | groups[:, :, :, 1] << 4).transpose(1, 2)


def pack_q8(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes [rows, K] -> [rows/16, K/4, 16, 4] bytes, each code + 128 (the kernel's unsigned operand)."""
    rows, cols = codes.shape
    shifted = (codes.to(torch.int16) + 128).to(torch.uint8)
    return shifted.reshape(rows // TILE, TILE, cols // 4, 4).transpose(1, 2)


def _product(op, layer: QuantizedLayer, x: torch.Tensor, codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor,
             outputs: int | None) -> torch.Tensor:
    """x [..., in] times the layer's blocks by `op` (q4_mm, q8_mm) -> [..., out] (only the first `outputs`
    when given) in x's dtype. Lean where a decode step passes: no outputs, float32. (A dense model's attention
    layers call q4_mm from decode_layer.cpp instead, the same call on the same arguments.)"""
    flat = x.reshape(-1, layer.in_features)
    if outputs is None:
        out = op(flat, codes, d, m, layer.out_features // TILE, True)
    else:
        out = op(flat, codes, d, m, -(-outputs // TILE), True).narrow(1, 0, outputs)
    if x.dtype != torch.float32:
        out = out.to(x.dtype)
    return out.reshape(*x.shape[:-1], out.shape[-1])


class W4A8Linear(Int4Linear):
    """Int4Linear at group 32 as Q4_1 blocks for the w4a8 kernel (the loader fills it as an Int4Linear):
    codes [*, N/16, K/8, 16, 4] bytes, d and m [*, N/16, K/32, 16] float16, w = d·q + m."""

    def __init__(self, in_features: int, out_features: int, group: int = BLOCK, experts: int = 0,
                 kernels: str = "cpu"):
        if not self.fits(in_features, out_features, group, kernels):
            raise ValueError(f"the w4a8 kernel takes group {BLOCK} on the CPU, inputs a multiple of {BLOCK} and "
                             f"outputs of {TILE}, not group {group} on {kernels} for {in_features} -> {out_features}")
        QuantizedLayer.__init__(self)
        self.in_features, self.out_features, self.group, self.experts = in_features, out_features, BLOCK, experts
        self.kernels = "cpu"
        lead, tiles = (experts,) if experts else (), out_features // TILE
        self.register_buffer("codes", torch.empty(*lead, tiles, in_features // 8, TILE, 4, dtype=torch.uint8))
        for name in ("d", "m"):
            self.register_buffer(name, torch.empty(*lead, tiles, in_features // BLOCK, TILE, dtype=torch.float16))

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @staticmethod
    def fits(in_features: int, out_features: int, group: int, kernels: str = "cpu") -> bool:
        return kernels == "cpu" and group == BLOCK and in_features % BLOCK == 0 and out_features % TILE == 0

    def load_codes(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, start: int = 0) -> None:
        """Int4Linear's form (w = (codes - 8)·scale + zero) for the rows from `start` on (a multiple of 16),
        held as d = scale, m = zero - 8·scale in float16."""
        tiles, first = codes.shape[0] // TILE, start // TILE
        d = scales.float()
        self.codes.narrow(0, first, tiles).copy_(pack_q4(codes))
        self.d.narrow(0, first, tiles).copy_(tiled(d))
        self.m.narrow(0, first, tiles).copy_(tiled(zeros.float() - 8 * d))

    def forward(self, x: torch.Tensor, outputs: int | None = None,
                expert: int | torch.Tensor | None = None) -> torch.Tensor:
        codes, d, m = self.picked(expert, self.codes, self.d, self.m)
        return _product(torch.ops.mtpchat_w4a8.q4_mm, self, x, codes, d, m, outputs)

    def dequantized(self) -> torch.Tensor:
        """The weight the kernel multiplies by, [out, in] in float32 (exact: d·q + m)."""
        low, high = self.codes & 15, self.codes >> 4  # [N/16, K/8, 16, 4] each
        codes = torch.stack((low, high), dim=2).permute(0, 3, 1, 2, 4).reshape(self.out_features, self.in_features)
        return codes.float() * per_input(self.d) + per_input(self.m)


class W4A8Q8Linear(Q8Linear):
    """Q8Linear (GGUF Q8_0's blocks exactly) for the w4a8 kernel: codes + 128 [N/16, K/4, 16, 4] bytes, d
    [N/16, K/32, 16] float16, w = d·(codes - 128)."""

    def __init__(self, in_features: int, out_features: int):
        QuantizedLayer.__init__(self)
        self.in_features, self.out_features, self.group, self.experts = in_features, out_features, BLOCK, 0
        self.kernels = "cpu"
        tiles = out_features // TILE
        self.register_buffer("codes", torch.empty(tiles, in_features // 4, TILE, 4, dtype=torch.uint8))
        self.register_buffer("d", torch.empty(tiles, in_features // BLOCK, TILE, dtype=torch.float16))

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @staticmethod
    def fits(in_features: int, out_features: int) -> bool:
        return in_features % BLOCK == 0 and out_features % TILE == 0

    def load_q8_0(self, codes: torch.Tensor, d: torch.Tensor) -> None:
        """codes int8 [out, in], d [out, in/32]."""
        for start, block in row_blocks(codes):
            tiles, first = block.shape[0] // TILE, start // TILE
            self.codes.narrow(0, first, tiles).copy_(pack_q8(block))
            self.d.narrow(0, first, tiles).copy_(tiled(d.narrow(0, start, block.shape[0])))

    def forward(self, x: torch.Tensor, outputs: int | None = None) -> torch.Tensor:
        return _product(torch.ops.mtpchat_w4a8.q8_mm, self, x, self.codes, self.d, self.d, outputs)

    def dequantized(self) -> torch.Tensor:
        """The weight the kernel multiplies by, [out, in] in float32 (exact: d·q)."""
        codes = self.codes.transpose(1, 2).reshape(self.out_features, self.in_features).float() - 128
        return codes * per_input(self.d)


def q8_0_layer(in_features: int, out_features: int, kernels: str) -> Q8Linear:
    """The layer that holds a GGUF Q8_0 matrix exactly on `kernels`: this kernel's on the CPU where it
    serves, Q8Linear (torch's int4 kernel over the input taken twice) otherwise."""
    if kernels == "cpu" and W4A8Q8Linear.fits(in_features, out_features) and enabled():
        return W4A8Q8Linear(in_features, out_features)
    return Q8Linear(in_features, out_features, kernels)
