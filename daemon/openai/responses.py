"""OpenAI response objects built from the daemon's replies: whole responses, stream chunks, usage.

`usage` comes from the wire's stats map (prompt and generated tokens, tokens resumed from the state
cache as `prompt_tokens_details.cached_tokens`). The speculative-decoding figures ride along in an
`mtp` field, as llama-server adds `timings`: OpenAI clients ignore it, our tools read it. A figure the
daemon did not report (a remote engine that keeps no such count) is left out, never made up.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from mtpchat.protocol import (
    ACCEPTANCE_APPROXIMATE,
    ACCEPTANCE_PER_POSITION,
    ACCEPTANCE_RATE,
    ACCEPTED_TOKENS,
    CACHED_TOKENS,
    DECODE_TOK_S,
    DRAFT_K,
    DRAFTED_TOKENS,
    DRAFTS,
    GENERATED_TOKENS,
    MEAN_ACCEPTANCE_LENGTH,
    PREFILL_TOK_S,
    PROMPT_TOKENS,
    TIME_TO_FIRST_TOKEN_S,
)

MTP_STATS = (DRAFT_K, DRAFTS, DRAFTED_TOKENS, ACCEPTED_TOKENS, ACCEPTANCE_RATE, MEAN_ACCEPTANCE_LENGTH,
             ACCEPTANCE_PER_POSITION, ACCEPTANCE_APPROXIMATE, DECODE_TOK_S, PREFILL_TOK_S, TIME_TO_FIRST_TOKEN_S)
FINISH_REASONS = {"stop": "stop", "length": "length", "context": "length"}  # context full: cut short


def usage(stats: dict) -> dict:
    prompt, completion = stats.get(PROMPT_TOKENS, 0), stats.get(GENERATED_TOKENS, 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": stats.get(CACHED_TOKENS, 0)}}


def mtp(stats: dict) -> dict:
    return {key: stats[key] for key in MTP_STATS if stats.get(key) is not None}


def finish_reason(done: dict) -> str:
    return FINISH_REASONS.get(done.get("finish_reason"), "stop")


@dataclass(frozen=True)
class Reply:
    """One response being written, chat or legacy completion: the two differ only in names and in how a
    choice holds its text."""
    chat: bool
    model: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": f"{'chatcmpl' if self.chat else 'cmpl'}-{self.id}", "object": kind, "created": self.created,
                "model": self.model}

    def whole(self, text: str, done: dict) -> dict:
        """The non-streaming response."""
        body = {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
        stats = done.get("stats", {})
        return {**self._head(False),
                "choices": [{"index": 0, **body, "logprobs": None, "finish_reason": finish_reason(done)}],
                "usage": usage(stats), "mtp": mtp(stats)}

    def chunk(self, text: str | None, finish: dict | None = None, first: bool = False) -> dict:
        """A stream chunk carrying `text` (None: no text), ending the choice when `finish` (the done
        reply) is given; the final chunk carries the stats in `mtp`."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
            body = {"delta": delta}
        else:
            body = {"text": text or ""}
        choice = {"index": 0, **body, "logprobs": None,
                  "finish_reason": finish_reason(finish) if finish is not None else None}
        chunk = {**self._head(True), "choices": [choice]}
        if finish is not None:
            chunk["mtp"] = mtp(finish.get("stats", {}))
        return chunk

    def usage_chunk(self, done: dict) -> dict:
        """`stream_options.include_usage`: the last chunk, without choices."""
        stats = done.get("stats", {})
        return {**self._head(True), "choices": [], "usage": usage(stats), "mtp": mtp(stats)}
