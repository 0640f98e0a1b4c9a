"""Tiny Qwen3.5/3.6 checkpoints in the exact on-disk layout of the hub, built offline in a second.

Tests and the no-download demo need checkpoints that look like the real ones to the loader:
`Qwen3_5[Moe]ForConditionalGeneration` weights (text trunk under `model.language_model.`, a tiny
`model.visual.*`, untied `lm_head`), sharded safetensors with an index, config.json with
`text_config`, `mtp.*` tensors, and a real tokenizer with a ChatML template. The trunk comes from
transformers' own classes; transformers has no MTP module, so the MTP layer is built from its decoder
layer class and saved beside it. Layer pattern as in the real models (full attention every 4th
layer), GQA, partial RoPE. Weights are random (seeded), scaled so logits are clearly peaked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from daemon.tiny.tokenizer import build_tokenizer

VOCAB = 1024
# Matrices small enough that fp32 rounding stays far below the 1e-4 parity bar through 8 layers;
# lm_head larger so next-token distributions are clearly peaked (few near-ties in greedy tests).
INIT_STD = 0.15
LM_HEAD_STD = 0.3
NORM_STD = 0.2
SHARD_BYTES = 1 << 20

TEXT = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
    num_attention_heads=4, num_key_value_heads=2, head_dim=32, linear_num_key_heads=2,
    linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
    linear_conv_kernel_dim=4, rms_norm_eps=1e-6, max_position_embeddings=4096,
    initializer_range=INIT_STD, tie_word_embeddings=False,
    rope_parameters=dict(rope_type="default", rope_theta=10_000_000.0, partial_rotary_factor=0.25,
                         mrope_section=[2, 1, 1], mrope_interleaved=True),
)
MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
VISION = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
              num_position_embeddings=16)

# name -> (model kind, MTP expert layout). Qwen3.6 stores the MTP experts fused, Qwen3.5 per expert.
VARIANTS = {
    "qwen3.6-dense-tiny": ("dense", "fused"),
    "qwen3.6-moe-tiny": ("moe", "fused"),
    "qwen3.5-moe-tiny": ("moe", "per_expert"),
}


def _classes(kind: str):
    if kind == "dense":
        from transformers import Qwen3_5Config as Config
        from transformers import Qwen3_5ForConditionalGeneration as Model
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5DecoderLayer as Layer
    else:
        from transformers import Qwen3_5MoeConfig as Config
        from transformers import Qwen3_5MoeForConditionalGeneration as Model
        from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeDecoderLayer as Layer
    return Config, Model, Layer


def _randomize(tensors: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    """Norm weights off their identity value (so a missing `1 +` shows), matrices at INIT_STD."""
    for name, tensor in tensors.items():
        if name.endswith(("A_log", "dt_bias")):
            continue
        std = NORM_STD if "norm" in name else LM_HEAD_STD if name == "lm_head.weight" else INIT_STD
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)


def _mtp_tensors(layer_class, text_config, moe: bool, layout: str, generator) -> dict[str, torch.Tensor]:
    full_attention_index = text_config.layer_types.index("full_attention")
    layer = {f"mtp.layers.0.{k}": v for k, v in layer_class(text_config, full_attention_index).state_dict().items()}
    hidden = text_config.hidden_size
    tensors = {
        "mtp.fc.weight": torch.empty(hidden, 2 * hidden),
        "mtp.pre_fc_norm_embedding.weight": torch.empty(hidden),
        "mtp.pre_fc_norm_hidden.weight": torch.empty(hidden),
        "mtp.norm.weight": torch.empty(hidden),
        **{k: v.clone() for k, v in layer.items()},
    }
    _randomize(tensors, generator)
    if moe and layout == "per_expert":
        base = "mtp.layers.0.mlp.experts"
        tensors.update(split_experts(base, tensors.pop(f"{base}.gate_up_proj"), tensors.pop(f"{base}.down_proj")))
    return tensors


def split_experts(base: str, gate_up: torch.Tensor, down: torch.Tensor) -> dict[str, torch.Tensor]:
    """Fused experts [E, 2I, H] and [E, H, I] as one tensor per expert and projection under `base`
    ("...mlp.experts"), the per-expert layout of Qwen3.5's and of the FP8 / compressed-tensors releases."""
    out = {}
    for e in range(gate_up.shape[0]):
        gate, up = gate_up[e].chunk(2)
        out[f"{base}.{e}.gate_proj.weight"] = gate.contiguous()
        out[f"{base}.{e}.up_proj.weight"] = up.contiguous()
        out[f"{base}.{e}.down_proj.weight"] = down[e].contiguous()
    return out


def _save_sharded(tensors: dict[str, torch.Tensor], out_dir: Path) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out_dir / filename, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, filename))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# tensors -> (tensors as written, config.json's quantization_config or None)
Convert = Callable[[dict[str, torch.Tensor]], tuple[dict[str, torch.Tensor], dict | None]]


def build_checkpoint(out_dir: Path, kind: str = "dense", mtp_layout: str = "fused", seed: int = 0,
                     convert: Convert | None = None) -> Path:
    """Write a tiny `kind` ("dense" | "moe") checkpoint with its MTP head to out_dir; `convert` rewrites
    its tensors first (daemon.tiny.quantized_checkpoints: the layouts that ship quantized)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    special = build_tokenizer(out_dir, vocab_size=VOCAB)
    Config, Model, Layer = _classes(kind)
    text = dict(TEXT, **(MOE if kind == "moe" else {}), eos_token_id=special["<|im_end|>"],
                pad_token_id=special["<|endoftext|>"])
    config = Config(text_config=text, vision_config=VISION)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Model(config).eval()
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    _randomize(tensors, generator)
    tensors.update(_mtp_tensors(Layer, config.text_config, kind == "moe", mtp_layout, generator))
    quantization_config = None
    if convert is not None:
        tensors, quantization_config = convert(tensors)
    _save_sharded(tensors, out_dir)

    raw = config.to_dict()
    raw["architectures"] = [Model.__name__]
    raw["text_config"].update(mtp_num_hidden_layers=1, mtp_use_dedicated_embeddings=False)
    if quantization_config is not None:
        raw["quantization_config"] = quantization_config
    (out_dir / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    generation = {"eos_token_id": [special["<|im_end|>"], special["<|endoftext|>"]],
                  "pad_token_id": special["<|endoftext|>"], "do_sample": False}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out_dir


def build_all(root: Path, seed: int = 0) -> dict[str, Path]:
    return {name: build_checkpoint(Path(root) / name, kind, layout, seed) for name, (kind, layout) in VARIANTS.items()}
