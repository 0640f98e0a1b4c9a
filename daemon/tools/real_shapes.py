"""The real Qwen3.6 text shapes, for benchmarks with random weights (no download needed).

`random_model` builds our model at a real shape — optionally with fewer layers (the every-4th
full-attention pattern is kept) and a smaller vocabulary so it fits a CPU — with seeded random
weights, directly on the target device.
"""

from __future__ import annotations

import torch

from daemon.model.config import TextConfig
from daemon.model.quantized import (
    Quantization,
    QuantizedExperts,
    quantize_modules,
    quantized_kernels,
    quantized_weights,
)
from daemon.model.text_model import QwenModel

_COMMON = dict(
    vocab_size=248_320, head_dim=256, rope_theta=10_000_000.0, partial_rotary_factor=0.25,
    linear_conv_kernel_dim=4, linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=16,
    mtp_num_hidden_layers=1, max_position_embeddings=262_144,
)
SHAPES = {
    "qwen3.6-27b": dict(_COMMON, model_type="qwen3_5_text", hidden_size=5120, intermediate_size=17408,
                        num_hidden_layers=64, num_attention_heads=24, num_key_value_heads=4,
                        linear_num_value_heads=48),
    "qwen3.6-35b-a3b": dict(_COMMON, model_type="qwen3_5_moe_text", hidden_size=2048, num_hidden_layers=40,
                            num_attention_heads=16, num_key_value_heads=2, linear_num_value_heads=32,
                            num_experts=256, num_experts_per_tok=8, moe_intermediate_size=512,
                            shared_expert_intermediate_size=512),
}


def shape_config(name: str, layers: int | None = None, vocab: int | None = None,
                 overrides: dict | None = None) -> TextConfig:
    """The named shape, cut to `layers` (a multiple of 4) and `vocab`, with any other fields overridden."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    raw = dict(SHAPES[name])
    if layers:
        if layers % 4:
            raise ValueError("layers must be a multiple of 4 to keep the full-attention pattern")
        raw["num_hidden_layers"] = layers
    if vocab:
        raw["vocab_size"] = vocab
    return TextConfig.from_dict({**raw, **(overrides or {})})


@torch.no_grad()
def random_model(config: TextConfig, device: torch.device | str, dtype: torch.dtype, seed: int = 0,
                 quantization: Quantization | None = None) -> QwenModel:
    """Random weights at the given shape (std 0.02 matrices, zero-centred norms at identity); with a
    `quantization`, its layers quantized from such weights one at a time (as the loader does)."""
    device = torch.device(device)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.device("meta"):
        model = QwenModel(config, with_mtp=True).to(dtype)
        if quantization is not None:
            quantize_modules(model, quantization, quantized_kernels({str(device)}))
    model.to_empty(device=device)
    for name, module, shape in quantized_weights(model):
        weight = torch.randn(shape, generator=generator, device=device) * 0.02
        if isinstance(module, QuantizedExperts):
            module.load(name.rsplit(".", 1)[1], weight)
        else:
            module.load(weight)
    for name, param in model.named_parameters():
        if name.endswith("A_log"):
            param.uniform_(0.0, 2.7, generator=generator)  # A in [1, 15], as initialised in training
        elif name.endswith(("dt_bias", "linear_attn.norm.weight")):
            param.fill_(1.0)
        elif "norm" in name:
            param.zero_()
        else:
            param.normal_(0.0, 0.02, generator=generator)
    return model.eval().requires_grad_(False)
