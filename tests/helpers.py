"""Small helpers shared by tests: reference models from transformers and prompt ids."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM

TOLERANCE = 1e-4


def reference_model(checkpoint):
    """transformers' own text model, loaded from the same hub-layout checkpoint (fp32, eager)."""
    config_text = (checkpoint / "config.json").read_text()
    cls = Qwen3_5MoeForCausalLM if '"qwen3_5_moe"' in config_text else Qwen3_5ForCausalLM
    return cls.from_pretrained(checkpoint, dtype=torch.float32).eval()


def chat_prompt(checkpoint, text: str, enable_thinking: bool = True) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=True, enable_thinking=enable_thinking, return_dict=False)


def random_ids(length: int, seed: int, vocab: int = 1024) -> torch.Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))
