"""One chat reply, in process: chat template -> our engine -> text deltas and stats.

This is what `mtpchat ask` runs until the daemon serves it over ZeroMQ; the daemon will reuse it.
Text is streamed by decoding the whole reply so far and emitting only the new suffix, holding back
an incomplete UTF-8 sequence and any tail that could still become a stop string, so multi-byte
characters never arrive split and a stop string never leaks out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from daemon.decode_stats import DecodeStats
from daemon.generate import generate
from daemon.model import QwenModel
from daemon.sampling import SamplingParams


@dataclass
class ReplyResult:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    stats: DecodeStats = field(default_factory=DecodeStats)

    def as_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "finish_reason": self.finish_reason,
                "stats": self.stats.as_dict()}


def load_chat_model(checkpoint: str | Path, device: str | None = None):
    from transformers import AutoTokenizer

    from daemon.checkpoint import resolve_checkpoint
    from daemon.loader import load_model

    directory = resolve_checkpoint(checkpoint)
    return load_model(directory, device=device), AutoTokenizer.from_pretrained(directory)


def stream_reply(model: QwenModel, tokenizer, messages: list[dict], *, max_tokens: int = 256,
                 enable_thinking: bool = True, draft_k: int = 0, adaptive: bool = False,
                 sampling: SamplingParams = SamplingParams(), stop: tuple[str, ...] = (),
                 result: ReplyResult | None = None) -> Iterator[str]:
    """Yield text deltas of the reply; fill `result` (text, ids, finish reason, stats) as it goes."""
    result = result if result is not None else ReplyResult()
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           enable_thinking=enable_thinking, return_dict=False)
    stop_ids = set(model.config.eos_token_ids) | {tokenizer.eos_token_id}
    hold = max((len(s) for s in stop), default=1) - 1
    streamed = ""
    tokens = generate(model, prompt, max_tokens, stop_ids, draft_k=draft_k, adaptive=adaptive, sampling=sampling,
                      stats=result.stats)
    for token in tokens:
        if token in stop_ids:
            break
        result.token_ids.append(token)
        text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
        hits = [i for i in (text.find(s, max(0, len(streamed) - hold)) for s in stop) if i >= 0]
        if hits:
            result.text, result.finish_reason = text[:min(hits)], "stop"
            tokens.close()
            break
        if not text.endswith("\ufffd"):
            result.text = text
            safe = len(text) - hold
            if safe > len(streamed):
                yield text[len(streamed):safe]
                streamed = text[:safe]
    if not result.finish_reason:
        result.finish_reason = result.stats.finish_reason
        result.text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
    if len(result.text) > len(streamed):
        yield result.text[len(streamed):]
