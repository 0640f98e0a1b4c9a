"""Plain (non-speculative) greedy decoding: the baseline every faster path must reproduce exactly.

A generator in the manner of nanochat's `Engine.generate`: it yields token ids as they are decided,
so streaming falls out naturally; the caller stops consuming whenever it likes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from daemon.model import QwenModel


@torch.inference_mode()
def generate_greedy(model: QwenModel, prompt_ids: list[int], max_new_tokens: int,
                    stop_ids: Iterable[int] = ()) -> Iterator[int]:
    """Yield up to `max_new_tokens` argmax tokens; a stop token is yielded, then generation ends."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    limit = model.config.max_position_embeddings
    if len(prompt_ids) >= limit:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the model's context is {limit}")
    max_new_tokens = min(max_new_tokens, limit - len(prompt_ids))
    stop = set(stop_ids)
    cache = model.new_cache(len(prompt_ids) + max_new_tokens)
    ids = torch.tensor([prompt_ids], device=model.device)
    logits, _ = model(ids, cache, 0, last_only=True)
    position = len(prompt_ids)
    for produced in range(1, max_new_tokens + 1):
        token = int(logits[0, -1].argmax())
        yield token
        if token in stop or produced == max_new_tokens:
            return
        logits, _ = model(torch.tensor([[token]], device=model.device), cache, position)
        position += 1
