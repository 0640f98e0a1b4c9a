"""What weight-only quantization costs in quality: next-token distributions against the unquantized model.

The unquantized model writes a greedy reply to each prompt; every model then reads prompt + reply in one
teacher-forced forward, and at each reply position the quantized model's next-token distribution is
compared with the reference's: top-1 agreement (the same most likely token) and KL(reference ‖ quantized)
in nats, averaged over positions. Teacher forcing keeps every model on the same text, so a disagreement
early in a reply does not change what later positions are measured on.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from daemon.engine.generate import Generation
from daemon.engine.options import GenerationOptions
from daemon.model.text_model import QwenModel


def reference_replies(model: QwenModel, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """prompt + the model's greedy reply, per prompt."""
    return [prompt + Generation(model, prompt, GenerationOptions(max_tokens=max_tokens)).tokens() for prompt in prompts]


@torch.inference_mode()
def reply_log_probs(model: QwenModel, sequence: list[int], prompt_tokens: int) -> torch.Tensor:
    """Float64 log-probabilities [reply positions, V] of the token after each position from the prompt's last on."""
    cache = model.new_cache(len(sequence))
    logits, _ = model(torch.tensor([sequence], device=model.device), cache, 0)
    return F.log_softmax(logits[0, prompt_tokens - 1:-1].double(), dim=-1)


def compare(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> dict:
    """Top-1 agreement and mean KL(reference ‖ candidate) over every reply position of every sequence."""
    ref, cand = torch.cat(reference), torch.cat(candidate)
    kl = (ref.exp() * (ref - cand)).sum(dim=-1)
    return {"positions": ref.shape[0],
            "top1_agreement": round((ref.argmax(-1) == cand.argmax(-1)).double().mean().item(), 4),
            "mean_kl_nats": round(kl.mean().item(), 5), "max_kl_nats": round(kl.max().item(), 4)}
