"""Feed-forward blocks: the dense SwiGLU MLP and the sparse MoE with a gated shared expert.

The dense MLP's gate_proj and up_proj are stacked into one gate_up_proj (one weight read and kernel
call per step; `stacks` tells the loader the rows of each). Where both products take this project's
float32 kernel (daemon/model/linear.py), the MLP is one call (decode_layer.cpp's mlp_rows: the same ops, so
the same bits) instead of seven Python-level ones; with it and a leaner Linear call, the demo's fp32
decode step went 44.2-45.3 -> 42.5-42.9 ms at 1 thread and 25.3 -> 23.6-24.0 at 2 (A/B against the
commit before, median of 64 steps, Sapphire Rapids). Routed experts are stored fused, as the hub ships
them: gate_up_proj [E, 2I, H] (gate half first) and down_proj [E, H, I]. For the few tokens of a decode
or verify step the chosen experts' weights are gathered and applied in one batched matmul (no per-expert
Python loop, fixed shapes); long prefills loop over the experts that were hit instead, to avoid copying
weights per token.
"""

import torch
from torch import nn
from torch.nn import functional as F

from daemon.model.config import TextConfig
from daemon.model.linear import Linear, few_rows, linear, own_product
from daemon.model.precision import accumulation_dtype

# Gather expert weights per (token, choice) up to this many pairs; beyond it loop over experts.
GATHER_MAX_PAIRS = 64


class DenseMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.intermediate = intermediate
        self.gate_up_proj = Linear(hidden, 2 * intermediate)
        self.down_proj = Linear(intermediate, hidden)

    @property
    def stacks(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """gate_up_proj stacks the checkpoint's gate_proj and up_proj (their rows, in order)."""
        return {"gate_up_proj": (("gate_proj", self.intermediate), ("up_proj", self.intermediate))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up, down = self.gate_up_proj, self.down_proj
        if (type(gate_up) is type(down) is Linear and few_rows(x) and own_product(gate_up.weight)
                and own_product(down.weight)):  # the same ops in one call (f32_mm.cpp)
            return torch.ops.mtpchat_cpu.mlp_rows(x, gate_up.weight, down.weight)
        gate, up = gate_up(x).chunk(2, dim=-1)
        return down(F.silu(gate) * up)


class RoutedExperts(nn.Module):
    def __init__(self, num_experts: int, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, intermediate))

    def forward(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [N, H]; experts, weights [N, top_k] -> weighted sum of the chosen experts [N, H]."""
        if experts.numel() <= GATHER_MAX_PAIRS:
            gate, up = (self.gate_up_proj[experts] @ x[:, None, :, None]).squeeze(-1).chunk(2, dim=-1)
            out = (self.down_proj[experts] @ (F.silu(gate) * up)[..., None]).squeeze(-1)
            return (out * weights[..., None]).sum(dim=1)
        result = torch.zeros_like(x)
        for expert in experts.unique().tolist():
            token, choice = torch.where(experts == expert)
            gate, up = linear(x[token], self.gate_up_proj[expert]).chunk(2, dim=-1)
            out = linear(F.silu(gate) * up, self.down_proj[expert]) * weights[token, choice, None]
            result.index_add_(0, token, out)
        return result


class SparseMoE(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        hidden = config.hidden_size
        self.gate = Linear(hidden, config.num_experts)
        self.experts = RoutedExperts(config.num_experts, hidden, config.moe_intermediate_size)
        self.shared_expert = DenseMLP(hidden, config.shared_expert_intermediate_size)
        self.shared_expert_gate = Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        probs = F.softmax(self.gate(flat), dim=-1, dtype=accumulation_dtype(x.dtype))
        weights, experts = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        routed = self.experts(flat, experts, weights)
        shared = torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return (routed + shared).view_as(x)


def feed_forward(config: TextConfig) -> nn.Module:
    if config.is_moe:
        return SparseMoE(config)
    return DenseMLP(config.hidden_size, config.intermediate_size)
