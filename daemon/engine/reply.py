"""One chat reply: chat template -> our engine -> text pieces, token provenance and stats.

`ReplyStream` is what the daemon steps through, token by token, for each request. Text is produced
by decoding the whole reply so far and handing out only the new suffix, holding back an incomplete
UTF-8 sequence and any tail that could still become a stop string, so multi-byte characters never
arrive split and a stop string never leaks out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from daemon.engine.decode_stats import DecodeStats
from daemon.engine.generate import PREFILLING, Generation
from daemon.engine.options import GenerationOptions
from daemon.engine.state_cache import PromptReuse
from daemon.model.text_model import QwenModel


@dataclass
class ReplyResult:
    stats: DecodeStats  # the generation's own: live while it runs
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""


@dataclass(frozen=True)
class Piece:
    """One generated token (None: no token — a part of a chunked prefill ran, or only text released at
    the end), whether it was an accepted draft, and the text it released."""
    token: int | None
    drafted: bool
    text: str


def render_prompt(tokenizer, messages: list[dict], enable_thinking: bool = True) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                         enable_thinking=enable_thinking, return_dict=False)


def prompt_messages(prompt: str | list[dict]) -> list[dict]:
    """A prompt as chat messages: a text is one user turn, a list of messages is taken as it is."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def user_prompts(tokenizer, prompts: list[str | list[dict]]) -> list[list[int]]:
    """Each prompt (a text: one user turn; or a conversation: a list of messages) rendered for generation
    with thinking off (benchmarks, training)."""
    return [render_prompt(tokenizer, prompt_messages(prompt), enable_thinking=False) for prompt in prompts]


def turn_boundary(tokenizer, messages: list[dict], prompt: list[int]) -> int | None:
    """Where the conversation before this turn's assistant header ends in `prompt`, if the template
    renders it as a prefix: the point the next turn's prompt most likely shares (old assistant turns
    may re-render differently, e.g. without their thinking)."""
    history = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=True, return_dict=False)
    return len(history) if 0 < len(history) < len(prompt) and prompt[:len(history)] == history else None


class ReplyStream:
    """Iterate to get `Piece`s; `result` holds text, ids, finish reason and live stats; `close` cancels."""

    def __init__(self, model: QwenModel, tokenizer, prompt: list[int],
                 options: GenerationOptions = GenerationOptions(), reuse: PromptReuse | None = None):
        self.tokenizer, self.stop = tokenizer, options.stop
        self.stop_ids = set(model.config.eos_token_ids) | {tokenizer.eos_token_id}
        self._steps = Generation(model, prompt, options, self.stop_ids, reuse=reuse)
        self.result = ReplyResult(stats=self._steps.stats)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self._released = ""  # text handed out so far
        self._settled_text, self._settled_tokens = "", 0  # text of a token prefix that ends on a full character

    def __iter__(self) -> Iterator[Piece]:
        return self

    def _decoded(self) -> str:
        """The reply so far, decoding only the tokens after the settled prefix (plus one token of context,
        for tokenizers that render a token differently at the start): decoding the whole reply on
        every token would make long replies quadratic. Ends with U+FFFD while a character is incomplete."""
        ids = self.result.token_ids
        start = max(self._settled_tokens - 1, 0)
        context = self.tokenizer.decode(ids[start:self._settled_tokens], skip_special_tokens=True)
        new = self.tokenizer.decode(ids[start:], skip_special_tokens=True)[len(context):]
        if new.endswith("\ufffd"):
            return self._settled_text + new
        self._settled_text += new
        self._settled_tokens = len(ids)
        return self._settled_text

    def _release(self, text: str) -> str:
        new, self._released = text[len(self._released):], text
        return new

    def __next__(self) -> Piece:
        if self.result.finish_reason:
            raise StopIteration
        result = self.result
        step = next(self._steps, None)
        if step is PREFILLING:
            return Piece(None, False, "")
        if step is not None and step.token in self.stop_ids:
            self._steps.close()  # it ended on this token (its finish_reason is set): save its state now
            step = None
        if step is None:
            result.finish_reason = result.stats.finish_reason
            result.text = self.tokenizer.decode(result.token_ids, skip_special_tokens=True)
            tail = self._release(result.text)
            if not tail:
                raise StopIteration
            return Piece(None, False, tail)
        token, drafted = step.token, step.drafted
        result.token_ids.append(token)
        text = self._decoded()
        hits = [i for i in (text.find(s, max(0, len(self._released) - self._hold)) for s in self.stop) if i >= 0]
        if hits:
            self._steps.close()
            result.text, result.finish_reason = text[:min(hits)], "stop"
            return Piece(token, drafted, self._release(result.text))
        released = ""
        if not text.endswith("\ufffd"):
            result.text = text
            if len(text) - self._hold > len(self._released):
                released = self._release(text[:len(text) - self._hold])
        return Piece(token, drafted, released)

    def close(self) -> None:
        """Stop generating (the caller cancelled); the result keeps what was produced."""
        self._steps.close()
        if not self.result.finish_reason:
            self.result.finish_reason = "cancelled"
