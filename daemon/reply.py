"""One chat reply, in process: chat template -> our engine -> text deltas and stats.

This is what `mtpchat ask` runs until the daemon serves it over ZeroMQ; the daemon will reuse it.
Text is streamed by decoding the whole reply so far and emitting only the new suffix, holding back
an incomplete UTF-8 sequence, so multi-byte characters never arrive split.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from daemon.generate import generate_greedy
from daemon.model import QwenModel


@dataclass
class ReplyResult:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    prompt_tokens: int = 0
    time_to_first_token_s: float = 0.0
    decode_tokens_per_s: float = 0.0

    def as_dict(self) -> dict:
        return dict(vars(self))


def load_chat_model(checkpoint: str | Path, device: str | None = None):
    from transformers import AutoTokenizer

    from daemon.checkpoint import resolve_checkpoint
    from daemon.loader import load_model

    directory = resolve_checkpoint(checkpoint)
    return load_model(directory, device=device), AutoTokenizer.from_pretrained(directory)


def stream_reply(model: QwenModel, tokenizer, messages: list[dict], *, max_tokens: int = 256,
                 enable_thinking: bool = True, result: ReplyResult | None = None) -> Iterator[str]:
    """Yield text deltas of the reply; fill `result` (text, ids, finish reason, timings) as it goes."""
    result = result if result is not None else ReplyResult()
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           enable_thinking=enable_thinking, return_dict=False)
    result.prompt_tokens = len(prompt)
    stop_ids = set(model.config.eos_token_ids) | {tokenizer.eos_token_id}
    started = time.perf_counter()
    first_token_at = None
    for token in generate_greedy(model, prompt, max_tokens, stop_ids):
        if first_token_at is None:
            first_token_at = time.perf_counter()
        if token in stop_ids:
            result.finish_reason = "stop"
            break
        result.token_ids.append(token)
        text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
        if not text.endswith("\ufffd") and len(text) > len(result.text):
            delta, result.text = text[len(result.text):], text
            yield delta
    finished = time.perf_counter()
    text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
    if len(text) > len(result.text):
        delta, result.text = text[len(result.text):], text
        yield delta
    if first_token_at is not None:
        result.time_to_first_token_s = first_token_at - started
        decoded = len(result.token_ids) + (result.finish_reason == "stop") - 1
        if decoded > 0 and finished > first_token_at:
            result.decode_tokens_per_s = decoded / (finished - first_token_at)
