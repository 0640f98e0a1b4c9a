"""Weight-only int8 and int4 layers on torch's own CPU kernels, and the swap that puts them (and
daemon.model.fp8's FP8 layers) in a model.

int8 is symmetric per output channel (`torch._weight_int8pack_mm(x, w_int8 [N, K], scales [N])`);
int4 is group-wise with a scale and a zero point per `group` inputs of each output row, in torch's
convention w = (q - 8)·scale + zero, q in 0..15 (`torch._convert_weight_to_int4pack_for_cpu` packs
codes [N, K] into [N, K/2] bytes, `torch._weight_int4pack_mm_for_cpu(x, packed, group,
scales_and_zeros [K/group, N, 2])` multiplies). GGUF's Q4_1 (w = d·q + m, blocks of 32) is that
form at group 32 with scale d and zero m + 8d, so its codes are taken as shipped (`load_codes`).

Both kernels are vectorised on the CPU only for bfloat16 activations: measured in torch 2.13 on this
project's AVX-512 machine (1 thread, median), a 1536x576 matrix times one row takes 46 µs (int8) and
30 µs (int4) with bfloat16 rows but 628 µs and 1434 µs with float32 rows (a scalar loop; float16 is
as slow), against 177 µs for float32 F.linear. So the kernels are fed bfloat16 rows and their scales
are kept in bfloat16 (the kernel takes no other mix) whatever the model's compute dtype; outputs go
back to it, and everything outside these matmuls (norms, attention, DeltaNet state, the embedding)
stays in it. The cost is the bfloat16 rounding of the kernel's inputs, outputs and scales (relative
2^-9), well below the 4- or 8-bit rounding of the weights themselves. MTP decoding of a quantized
model stays token-identical to its plain decoding: the kernels give each row the same result however
many rows they multiply, and a verify's attention runs its query rows one at a time, each exactly as a
1-token decode step (daemon/model/attention.py), so no bfloat16 rounding sees different inputs.

What is left in the compute dtype: matrices the int4 kernel cannot take (out_features not a multiple
of 16, in_features not a multiple of the group) and the small gates whose outputs are softmaxed or
squashed per expert or head (the MoE router, the shared-expert gate, DeltaNet's b and a projections:
a fraction of a percent of the weights, and routing decisions are the most sensitive to rounding).
The lm_head is quantized to int8 whenever the trunk is quantized: the output layer is where 4-bit
rounding hurts most (llama.cpp keeps it at 6-8 bits for that reason). The MTP head follows its own
setting, since its rounding costs only acceptance, never correctness.

On the CPU, int4 at group 32 (the default) and the demo's Q8_0 head are served by this project's own
kernel where it builds (daemon.model.w4a8: integer codes times two int8 levels of each activation
block, about twice as fast as torch's at one row and closer to the fp32 model); these layers are what
its layers subclass, and what serves when it cannot be built or is turned off.

Why torch's ops and not torchao: torchao's CPU int4 weight-only tensor (Int4OpaqueTensor, read in
pytorch/ao) packs with the same `_convert_weight_to_int4pack_for_cpu` and multiplies with the same
`_weight_int4pack_mm_for_cpu`, so it would add a dependency and a tensor subclass (which our state cache,
compile and loader would have to see through) for the same kernel; its other CPU path (da8w4) quantizes
the activations to int8 as well, which weight-only quantization excludes.

On CUDA int4 keeps the same codes, scales and zeros (w = (q - 8)·scale + zero, scales_and_zeros
[K/group, N, 2]) but packs them into tensor-core tiles (`_convert_weight_to_int4pack` on bytes of two
codes) for torch's `_weight_int4pack_mm`. Which packing a layer holds is fixed when it is built
(`kernels`), as the model is built on the meta device before its storage is placed. int8 keeps its
codes and scales but does not take torch's CUDA `_weight_int8pack_mm`: it decoded the 27B shape at 4.7
tok/s on an H200 (2.5% of its bandwidth; scripts/device_check.py, README), and its source, as read, gives
each output one thread striding over the inputs (loads not coalesced); `int8_matmul_by_blocks` puts
cuBLAS on the codes converted to bfloat16 a block of rows at a time instead. No machine of this
project's CI has a GPU: the CUDA layout's shapes are tested on fake CUDA tensors here, its values by
scripts/device_check.py (a quantized matmul against its dequantized reference) when a GPU is lent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from daemon.model.fp8 import Fp8Linear
from daemon.model.linear import Linear
from daemon.model.mlp import RoutedExperts
from daemon.model.quantized_layer import QuantizedLayer, row_blocks


class Quantization(Protocol):
    """What to quantize how; `mtpchat.config.Quantization` is one (the model layer imports no config)."""
    method: str  # "none" | "int8" | "int4" | "fp8", the trunk's linear layers
    group: int  # int4: inputs per scale and zero point
    mtp_method: str  # the MTP head's

KERNEL_DTYPE = torch.bfloat16  # the only activation dtype torch's CPU weight-only kernels vectorise
INT4_ROWS = 16  # the int4 CPU packing takes out_features in multiples of this
CUDA_N_TILE = 8  # CUDA's int4 packing: out_features in tiles of this many rows (tensor-core m16n8k16)
CUDA_GROUPS = (32, 64, 128, 256)  # the groups CUDA's int4 kernel is built for
Q8_0_GROUP = 32  # inputs per GGUF Q8_0 block
PACKED_BLOCK_ROWS = 64  # the int4 CPU packing interleaves rows within blocks of 64, a shorter last block
# on its own (measured in torch 2.13); CUDA's packs tiles of 8 rows
# Linear layers left in the compute dtype whatever the setting (see the module docstring), by name.
KEEP_FLOAT = ("mlp.gate", "mlp.shared_expert_gate", "linear_attn.in_proj_b", "linear_attn.in_proj_a")


def int8_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [..., N, K] -> (codes int8 [..., N, K], scales [..., N] in KERNEL_DTYPE), symmetric per
    row: w ≈ codes·scale. The scale is rounded to KERNEL_DTYPE before the codes are chosen, so codes·scale
    is the nearest grid point of the scale the kernel uses."""
    weight = weight.float()
    scales = (weight.abs().amax(dim=-1) / 127).clamp_min(torch.finfo(torch.float32).tiny).to(KERNEL_DTYPE)
    codes = (weight / scales.float()[..., None]).round().clamp(-127, 127).to(torch.int8)
    return codes, scales


def int4_quantize(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (codes 0..15 [N, K], scales [N, K/group], zeros [N, K/group]) in torch's
    convention w ≈ (codes - 8)·scale + zero, from each group's min and max. Scales and zeros are rounded
    to KERNEL_DTYPE before the codes are chosen."""
    rows, cols = weight.shape
    groups = weight.float().reshape(rows, cols // group, group)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = ((high - low) / 15).clamp_min(torch.finfo(torch.float32).tiny).to(KERNEL_DTYPE).float()
    zeros = (low + 8 * scales).to(KERNEL_DTYPE).float()
    codes = ((groups - zeros[..., None]) / scales[..., None] + 8).round().clamp(0, 15)
    return codes.reshape(rows, cols).to(torch.uint8), scales, zeros


def q4_1_to_int4(codes: torch.Tensor, d: torch.Tensor,
                 m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GGUF Q4_1 blocks (w = d·q + m, codes 0..15 [N, K], d and m [N, K/32]) in torch's int4 convention
    at group 32: the same codes, scale d, zero m + 8d (computed in float32, where it is exact for every
    block of the demo model: d and m are float16, 11 significant bits each)."""
    d, m = d.float(), m.float()
    return codes, d, m + 8 * d


class Int8Linear(QuantizedLayer):
    """A bias-free linear layer with int8 weights, symmetric per output channel (or `experts` of them)."""

    def __init__(self, in_features: int, out_features: int, experts: int = 0):
        super().__init__()
        self.in_features, self.out_features, self.experts = in_features, out_features, experts
        lead = (experts,) if experts else ()
        self.register_buffer("weight_int8", torch.empty(*lead, out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(*lead, out_features, dtype=KERNEL_DTYPE))

    @property
    def device(self) -> torch.device:
        return self.scales.device

    def load(self, weight: torch.Tensor) -> None:
        for start, block in row_blocks(weight):
            self.load_codes(*int8_quantize(block), start)

    def load_codes(self, codes: torch.Tensor, scales: torch.Tensor, start: int = 0) -> None:
        """codes int8 [rows, in]; scales [rows] (rounded to KERNEL_DTYPE): w = codes·scale, for the rows
        from `start` on."""
        rows = codes.shape[0]
        self.weight_int8.narrow(0, start, rows).copy_(codes)
        self.scales.narrow(0, start, rows).copy_(scales)

    def forward(self, x: torch.Tensor, outputs: int | None = None,
                expert: int | torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in] -> [..., out] (only the first `outputs` features when given), in x's dtype; a
        stacked layer multiplies by `expert`'s matrix."""
        weight, scales = self.picked(expert, self.weight_int8, self.scales)
        if outputs is not None:
            weight, scales = weight.narrow(0, 0, outputs), scales.narrow(0, 0, outputs)
        flat = x.reshape(-1, self.in_features).to(scales.dtype)
        matmul = int8_matmul_by_blocks if flat.is_cuda else torch._weight_int8pack_mm
        out = matmul(flat, weight, scales)
        return out.to(x.dtype).reshape(*x.shape[:-1], out.shape[-1])

    def dequantized(self) -> torch.Tensor:
        """The weight the kernel multiplies by, [out, in] in float32 (exact: codes·scale)."""
        return self.weight_int8.float() * self.scales.float()[:, None]


INT8_BLOCK_BYTES = 256 << 20  # the largest converted copy a CUDA int8 product holds at once (see below)


def int8_matmul_by_blocks(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                          block_bytes: int = INT8_BLOCK_BYTES) -> torch.Tensor:
    """x [M, K] times (codes [N, K] int8 · scales [N])ᵀ, as F.linear on the codes converted to x's dtype
    (exact in bfloat16: |code| <= 127 needs 7 bits), then scaled. It moves 5 bytes a weight (read the
    code, write and read the copy) where the ideal is 1, against torch's CUDA kernel that ran at 2.5% of
    the bandwidth. Rows go a block at a time so the copy stays under `block_bytes` (the lm_head alone
    would be 2.5 GB of bfloat16, held in a CUDA graph's pool); most layers are one block."""
    rows = max(1, block_bytes // (codes.shape[1] * x.element_size()))
    parts = [F.linear(x, block.to(x.dtype)) for block in codes.split(rows)]
    return (parts[0] if len(parts) == 1 else torch.cat(parts, -1)) * scales


@torch.library.custom_op("mtpchat::leading_rows", mutates_args=())
def leading_rows(scales_and_zeros: torch.Tensor, rows: int) -> torch.Tensor:
    """scales_and_zeros [K/g, N, 2] -> a contiguous copy of [:, :rows] (the kernels take no strides). An op
    of its own: inductor's int4 lowering (torch 2.13) takes the copy made inside a graph unrealised and
    fails (LoweringException: AssertionError: Pointwise); a custom op's output is a buffer."""
    return scales_and_zeros.narrow(1, 0, rows).clone(memory_format=torch.contiguous_format)


@leading_rows.register_fake
def _(scales_and_zeros: torch.Tensor, rows: int) -> torch.Tensor:
    return scales_and_zeros.new_empty((scales_and_zeros.shape[0], rows, *scales_and_zeros.shape[2:]))


class Int4Linear(QuantizedLayer):
    """A bias-free linear layer with int4 weights, a scale and a zero point per `group` inputs (or
    `experts` of them), packed for `kernels`: "cpu" ([out, in/2] bytes) or "cuda" (the tensor-core
    tiles of `_convert_weight_to_int4pack`: [out/8, in/(16·tiles), 32, tiles/2] int32)."""

    def __init__(self, in_features: int, out_features: int, group: int, experts: int = 0, kernels: str = "cpu"):
        super().__init__()
        self.in_features, self.out_features, self.group, self.experts = in_features, out_features, group, experts
        self.kernels = kernels
        lead = (experts,) if experts else ()
        if kernels == "cuda":
            self.k_tiles = _cuda_k_tiles(in_features)
            packed = torch.empty(*lead, out_features // CUDA_N_TILE, in_features // (16 * self.k_tiles), 32,
                                 self.k_tiles // 2, dtype=torch.int32)
        else:
            packed = torch.empty(*lead, out_features, in_features // 2, dtype=torch.uint8)
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros",
                             torch.empty(*lead, in_features // group, out_features, 2, dtype=KERNEL_DTYPE))

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @staticmethod
    def fits(in_features: int, out_features: int, group: int, kernels: str = "cpu") -> bool:
        if kernels == "cuda":
            return (out_features % CUDA_N_TILE == 0 and in_features % 32 == 0 and group in CUDA_GROUPS
                    and in_features % group == 0)
        return out_features % INT4_ROWS == 0 and in_features % group == 0

    def load(self, weight: torch.Tensor) -> None:
        for start, block in row_blocks(weight):
            self.load_codes(*int4_quantize(block, self.group), start)

    def load_codes(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, start: int = 0) -> None:
        """codes 0..15 [rows, in]; scales, zeros [rows, in/group]: w = (codes - 8)·scale + zero, for the rows
        from `start` on (a multiple of 64: blocks of 64 rows pack as within the whole matrix)."""
        packed = self.pack(codes)  # [rows, ...] on the CPU, [rows / 8, ...] tiles on CUDA
        self.packed.narrow(0, start * packed.shape[0] // codes.shape[0], packed.shape[0]).copy_(packed)
        pairs = torch.stack((scales, zeros), dim=-1).transpose(0, 1)
        self.scales_and_zeros.narrow(1, start, codes.shape[0]).copy_(pairs)

    def pack(self, codes: torch.Tensor) -> torch.Tensor:
        """codes 0..15 [rows, in] in this layer's packing (rows a multiple of 8), on its device."""
        if self.kernels == "cuda":  # two codes a byte, the even column high, packed into tiles on the GPU
            even, odd = codes.to(torch.uint8).reshape(codes.shape[0], -1, 2).unbind(-1)
            return torch._convert_weight_to_int4pack((even << 4 | odd).to(device=self.device), self.k_tiles)
        return torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)

    def forward(self, x: torch.Tensor, outputs: int | None = None,
                expert: int | torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in] -> [..., out] (only the first `outputs` features when given), in x's dtype; a
        stacked layer multiplies by `expert`'s matrix. The packing interleaves rows within blocks of 64,
        so the first `outputs` rounded up to a block are multiplied (their scales copied out by
        `leading_rows`)."""
        packed, scales_and_zeros = self.picked(expert, self.packed, self.scales_and_zeros)
        if outputs is not None:
            rows = min(-(-outputs // PACKED_BLOCK_ROWS) * PACKED_BLOCK_ROWS, self.out_features)
            packed = packed.narrow(0, 0, rows * packed.shape[0] // self.out_features)
            if rows < self.out_features:
                scales_and_zeros = leading_rows(scales_and_zeros, rows)
        flat = x.reshape(-1, x.shape[-1]).to(scales_and_zeros.dtype)
        matmul = torch._weight_int4pack_mm if self.kernels == "cuda" else torch._weight_int4pack_mm_for_cpu
        out = matmul(flat, packed, self.group, scales_and_zeros)
        out = out if outputs is None else out.narrow(1, 0, outputs)
        return out.to(x.dtype).reshape(*x.shape[:-1], out.shape[-1])

    def dequantized(self) -> torch.Tensor:
        """The weight the kernel multiplies by, [out, in] in float32: the kernel applied to the identity, so
        each entry is (q - 8)·scale + zero with the scale and zero exactly as stored (on the CPU, whose
        kernel has a float32 path; CUDA's takes bfloat16 only, so there the entries are rounded to it).
        A reference for tests (it costs in_features kernel rows)."""
        inputs = self.scales_and_zeros.shape[-3] * self.group  # what the kernel takes (Q8Linear: twice)
        if self.kernels == "cuda":
            eye = torch.eye(inputs, device=self.device, dtype=KERNEL_DTYPE)
            return torch._weight_int4pack_mm(eye, self.packed, self.group, self.scales_and_zeros).float().t()
        eye = torch.eye(inputs, device=self.device)
        return torch._weight_int4pack_mm_for_cpu(eye, self.packed, self.group, self.scales_and_zeros.float()).t()


class Q8Linear(Int4Linear):
    """GGUF's Q8_0 (blocks of 32 inputs: int8 codes q and a float16 scale d, w = d·q) exactly, as int4 at
    group 32 over the input taken twice: q = 16·h + l with l = q mod 16 and h in -8..7, so
    w·x = [16d·h | d·l]·[x | x], the high half codes h + 8 with scale 16d and zero 0, the low half codes
    l with scale d and zero 8d. One kernel call; only d is rounded (to the kernels' bfloat16).
    Per-channel int8 cannot hold 32-input scales: re-rounding the demo's Q8_0 lm_head per channel moved
    its logits by a mean KL of 0.0010 nats (top-1 98.3%) where this form moves them by 0.00005 (99.7%)
    (288 positions of 6 replies; README "Quality")."""

    def __init__(self, in_features: int, out_features: int, kernels: str = "cpu"):
        super().__init__(2 * in_features, out_features, Q8_0_GROUP, kernels=kernels)
        self.in_features = in_features  # what callers pass; the kernel takes it twice

    def load_q8_0(self, codes: torch.Tensor, d: torch.Tensor) -> None:
        """codes int8 [out, in], d [out, in/32]."""
        for start, block in row_blocks(codes):
            scale = d.narrow(0, start, block.shape[0]).float()
            low = block.to(torch.int16) & 15
            high = (block.to(torch.int16) - low) // 16 + 8
            self.load_codes(torch.cat((high, low), dim=-1), torch.cat((16 * scale, scale), dim=-1),
                            torch.cat((torch.zeros_like(scale), 8 * scale), dim=-1), start)

    def forward(self, x: torch.Tensor, outputs: int | None = None) -> torch.Tensor:
        return super().forward(torch.cat((x, x), dim=-1), outputs)

    def dequantized(self) -> torch.Tensor:
        """The weight the kernel multiplies by, [out, in] in float32: the sum of the halves (exact)."""
        high, low = super().dequantized().chunk(2, dim=-1)
        return high + low


def _cuda_k_tiles(in_features: int) -> int:
    """The most k-tiles of 16 inputs CUDA's int4 packing puts side by side (8, 4 or 2) that divide the input."""
    return next(tiles for tiles in (8, 4, 2) if in_features % (16 * tiles) == 0)


def quantized_linear(method: str, in_features: int, out_features: int, group: int,
                     experts: int = 0, kernels: str = "cpu") -> Int8Linear | Int4Linear | Fp8Linear | None:
    """The quantized layer for `method` (`experts` stacked, if given) on `kernels` ("cpu" or "cuda"), or
    None where the kernel cannot take the shape."""
    if method == "int8":
        return Int8Linear(in_features, out_features, experts)
    if method == "fp8" and Fp8Linear.fits(in_features, out_features, kernels):
        return Fp8Linear(in_features, out_features, experts, kernels)
    if method == "int4" and Int4Linear.fits(in_features, out_features, group, kernels):
        from daemon.model import w4a8  # it builds on this module's Int4Linear
        if w4a8.W4A8Linear.fits(in_features, out_features, group, kernels) and w4a8.enabled():
            return w4a8.W4A8Linear(in_features, out_features, group, experts)
        return Int4Linear(in_features, out_features, group, experts, kernels)
    return None


class QuantizedExperts(nn.Module):
    """RoutedExperts with gate_up_proj [E, 2I, H] and down_proj [E, H, I] as stacked quantized layers.

    Eager, forward loops over the experts that were hit (top_k per token: a decode step touches top_k
    experts, a verify at most (k+1)·top_k), each a kernel call over the rows routed to it on a view of
    its weights. torch has no batched (per-expert) form of these kernels, and gathering the chosen
    experts' int8 weights, as the float path gathers its own, has to widen them to a float dtype first.
    Measured at Qwen3.6-35B-A3B's expert shape (hidden 2048, expert ffn 512, top-8; 2 threads on a
    shared, loaded machine, median of 21, one module per expert then): one token 211 ms float gather,
    135 ms int8 gather with the scales applied after, 20 ms int8 loop, 10 ms int4 loop; five tokens
    1016, 844, 422 and 134 ms. On a quiet machine the loop takes 2.2 ms (int8) and 0.9 ms (int4) a
    token (scripts/bench_quantized_experts.py).

    The loop reads which experts were hit on the host, which a compiled graph or a CUDA graph cannot
    hold; traced or captured, forward takes every (token, choice) pair on its own instead (`slots`).
    """

    def __init__(self, num_experts: int, hidden: int, intermediate: int, method: str, group: int,
                 kernels: str = "cpu"):
        super().__init__()
        self.gate_up_proj = quantized_linear(method, hidden, 2 * intermediate, group, num_experts, kernels)
        self.down_proj = quantized_linear(method, intermediate, hidden, group, num_experts, kernels)

    def load(self, kind: str, weight: torch.Tensor) -> None:
        """Fill every expert's `kind` ("gate_up_proj" or "down_proj") from the fused [E, out, in] tensor."""
        layer = getattr(self, kind)
        for expert, expert_weight in enumerate(weight):
            layer.expert(expert).load(expert_weight)

    def forward(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [N, H]; experts, weights [N, top_k] -> weighted sum of the chosen experts [N, H]."""
        if torch.compiler.is_compiling() or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            return self.slots(x, experts, weights)
        result = torch.zeros_like(x)
        for expert in experts.unique().tolist():
            token, choice = torch.where(experts == expert)
            gate, up = self.gate_up_proj(x[token], expert=expert).chunk(2, dim=-1)
            out = self.down_proj(F.silu(gate) * up, expert=expert) * weights[token, choice, None]
            result.index_add_(0, token, out)
        return result

    def slots(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """forward as a graph can hold it: tokens × top_k kernel calls of one row each, the chosen expert's
        weights gathered by a device index (a copy of one expert's codes per call: on a 35B-A3B layer,
        1.5 MiB at int4 per pair, as much again as the kernel reads), no host synchronisation. Each
        token's choices are taken in expert order, so its sum adds the same terms in the same order as
        the loop's index_add_ (and the kernels give a row the same result however many rows they
        multiply): equal to the loop bit for bit. Run eagerly at the 35B-A3B expert shape
        (scripts/bench_quantized_experts.py --threads 2, quiet machine): int8 2.41 ms vs the loop's 2.20
        for one token, 11.4 vs 10.2 ms for four; int4 1.20 vs 0.91 ms, 5.21 vs 3.89 ms."""
        order = experts.argsort(dim=-1)
        experts, weights = experts.gather(-1, order), weights.gather(-1, order)
        rows = []
        for token in range(x.shape[0]):
            row = x.new_zeros(1, x.shape[1])
            for choice in range(experts.shape[1]):
                expert = experts[token, choice]
                gate, up = self.gate_up_proj(x[token:token + 1], expert=expert).chunk(2, dim=-1)
                row = row + self.down_proj(F.silu(gate) * up, expert=expert) * weights[token, choice]
            rows.append(row)
        return torch.cat(rows)


def quantized_weights(model: nn.Module) -> Iterator[tuple[str, nn.Module, torch.Size]]:
    """Every weight the model's quantized layers hold, as a checkpoint stores it: (name, layer, shape) for
    each Int8Linear, Int4Linear and Fp8Linear ([out, in]) and for each QuantizedExperts' fused gate_up_proj and
    down_proj (named `<experts>.<kind>`, [E, out, in]); the stacked layers inside are not listed apart.
    What the loader fills, and what the load-memory measurement counts."""
    experts: tuple[str, ...] = ()
    for name, module in model.named_modules():
        if name.startswith(experts):
            continue
        if isinstance(module, QuantizedExperts):
            experts += (f"{name}.",)
            for kind in ("gate_up_proj", "down_proj"):
                layer = getattr(module, kind)
                yield f"{name}.{kind}", module, torch.Size((layer.experts, layer.out_features, layer.in_features))
        elif isinstance(module, (Int8Linear, Int4Linear, Fp8Linear)):
            yield name, module, torch.Size((module.out_features, module.in_features))


def _method_for(name: str, quantization: Quantization) -> str:
    if name == "lm_head":
        return "none" if quantization.method == "none" else "int8"
    if name.endswith(KEEP_FLOAT):
        return "none"
    return quantization.mtp_method if name.startswith("mtp.") else quantization.method


def quantized_kernels(devices: Iterable[str]) -> str:
    """The kernels a model's quantized layers take on `devices` (its parts' device names): "cpu" or "cuda"."""
    kinds = {torch.device(device).type for device in devices}
    if len(kinds) == 1 and kinds <= {"cpu", "cuda"}:
        return kinds.pop()
    raise ValueError(f"quantized layers run on the CPU or on CUDA GPUs, with all of a model's parts on one kind "
                     f"(asked for {', '.join(sorted(devices))}); set quantize = \"none\" for this model, or "
                     "place it on one kind")


def quantize_modules(model: nn.Module, quantization: Quantization, kernels: str = "cpu") -> None:
    """Swap every Linear and RoutedExperts of `model` that `quantization` covers for its quantized form,
    laid out for `kernels` ("cpu" or "cuda": where the model will run). Call it inside
    `with torch.device("meta")` on a model built there, before storage is allocated: the loader then
    fills the new layers (`load` / `load_codes`) tensor by tensor."""
    group = quantization.group
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            method = _method_for(name, quantization)
            layer = None
            if method == "none" and quantization.method != "none" and isinstance(child, Linear):
                child.rows_alone = True  # a float layer among quantized ones (Linear's docstring says why)
            if method != "none" and isinstance(child, Linear):
                layer = quantized_linear(method, child.in_features, child.out_features, group, kernels=kernels)
            elif method != "none" and isinstance(child, RoutedExperts):
                experts, double_intermediate, hidden = child.gate_up_proj.shape
                layer = QuantizedExperts(experts, hidden, double_intermediate // 2, method, group, kernels)
                if layer.gate_up_proj is None or layer.down_proj is None:  # a kernel cannot take the shape
                    layer = None
            if layer is not None:
                setattr(parent, child_name, layer)
