"""Tiny plain-transformer checkpoints (Llama, Qwen3) as transformers' save_pretrained writes them.

The engine's second family — every layer full attention, ungated, plain RMSNorm — needs tiny
references the way the Qwen3.5/3.6 path has them: built offline in a second with transformers' own
classes, a real tokenizer with a ChatML template, no MTP head (these trunks ship without one; the
tests give them one with `train-head`). Llama ties its embeddings like SmolLM2; Qwen3 does not; the
Llama 3 variant has Llama 3.1+'s scaled RoPE.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from daemon.tiny.tokenizer import build_tokenizer

VOCAB = 1024
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=2048,
              initializer_range=0.15)
VARIANTS = {
    "llama-tiny": dict(COMMON, model_type="llama", rope_theta=100_000.0, tie_word_embeddings=True),
    "qwen3-tiny": dict(COMMON, model_type="qwen3", rope_theta=1_000_000.0, tie_word_embeddings=False),
    # Llama 3.1+'s scaled RoPE, with a short original context so every band (kept, interpolated, slowed) occurs
    "llama3-tiny": dict(COMMON, model_type="llama", tie_word_embeddings=True, rope_parameters=dict(
        rope_type="llama3", rope_theta=500_000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64)),
}
NORM_STD = 0.2


def _classes(model_type: str):
    if model_type == "llama":
        from transformers import LlamaConfig as Config
        from transformers import LlamaForCausalLM as Model
    else:
        from transformers import Qwen3Config as Config
        from transformers import Qwen3ForCausalLM as Model
    return Config, Model


def build_text_checkpoint(out_dir: Path, name: str, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    special = build_tokenizer(out_dir, vocab_size=VOCAB)
    fields = dict(VARIANTS[name])
    Config, Model = _classes(fields.pop("model_type"))
    config = Config(**fields, eos_token_id=special["<|im_end|>"], pad_token_id=special["<|endoftext|>"])
    torch.manual_seed(seed)
    model = Model(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # norm weights off 1, so a missing or extra `1 +` shows in parity tests
        for param_name, param in model.named_parameters():
            if "norm" in param_name:
                param.add_(torch.randn(param.shape, generator=generator) * NORM_STD)
    model.save_pretrained(out_dir)
    generation = {"eos_token_id": special["<|im_end|>"], "pad_token_id": special["<|endoftext|>"], "do_sample": False}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out_dir


def build_all_text(root: Path, seed: int = 0) -> dict[str, Path]:
    return {name: build_text_checkpoint(Path(root) / name, name, seed) for name in VARIANTS}
