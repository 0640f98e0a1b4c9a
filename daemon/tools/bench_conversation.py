"""Time to first token as a conversation grows, with the conversation state cache off and on.

One run plays the same conversation twice through `ReplyStream` with the model's chat template —
every turn re-sends the whole history, as a chat client does — once with a fresh full prefill per
turn and once resuming from the state cache. It reports, at chosen turns, the prompt length, the
tokens reused, TTFT both ways (medians over repeats) and their ratio, and whether every reply was token-identical.
"""

from __future__ import annotations

import statistics

from daemon.engine.options import GenerationOptions
from daemon.engine.reply import ReplyStream, render_prompt, turn_boundary
from daemon.engine.state_cache import PromptReuse, StateCache
from daemon.model.text_model import QwenModel

QUESTIONS = ["Tell me about the sea.", "Why is it salty?", "What lives at the bottom?", "How deep is it?",
             "Can people go there?", "What is a tide?", "Tell me more.", "Give an example.", "Why?",
             "Summarize what you said."]


def _play(model: QwenModel, tokenizer, turns: int, max_tokens: int, draft_k: int,
          cache: StateCache | None) -> list[dict]:
    messages: list[dict] = []
    played = []
    for turn in range(turns):
        messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
        prompt = render_prompt(tokenizer, messages, enable_thinking=False)
        reuse = PromptReuse(cache, "bench", turn_boundary(tokenizer, messages, prompt)) if cache else None
        stream = ReplyStream(model, tokenizer, prompt, GenerationOptions(max_tokens=max_tokens, draft_k=draft_k), reuse)
        text = "".join(piece.text for piece in stream)
        messages.append({"role": "assistant", "content": text})
        stats = stream.result.stats
        played.append({"tokens": stream.result.token_ids, "prompt_tokens": stats.prompt_tokens,
                       "cached_tokens": stats.cached_tokens, "ttft_s": stats.time_to_first_token_s})
    return played


def bench_conversation(model: QwenModel, tokenizer, report_turns: list[int], max_tokens: int = 48,
                       draft_k: int = 2, budget: int = 4 * 2**30, repeats: int = 3) -> dict:
    """Plays alternate off/on `repeats` times (after a warm-up); TTFTs are per-turn medians."""
    turns = max(report_turns)
    _play(model, tokenizer, 1, 4, draft_k, None)  # warm-up: lazy initialisation is not the cache's merit
    off, on = [], []
    for _ in range(repeats):
        off.append(_play(model, tokenizer, turns, max_tokens, draft_k, None))
        on.append(_play(model, tokenizer, turns, max_tokens, draft_k, StateCache(budget)))
    rows = []
    for turn in report_turns:
        ttft_off = statistics.median(play[turn - 1]["ttft_s"] for play in off)
        ttft_on = statistics.median(play[turn - 1]["ttft_s"] for play in on)
        rows.append({"turn": turn, "prompt_tokens": off[0][turn - 1]["prompt_tokens"],
                     "cached_tokens": on[0][turn - 1]["cached_tokens"], "ttft_off_s": round(ttft_off, 4),
                     "ttft_on_s": round(ttft_on, 4), "speedup": round(ttft_off / ttft_on, 2)})
    replies = [[turn["tokens"] for turn in play] for play in off + on]
    return {"turns": rows, "reply_tokens": max_tokens, "draft_k": draft_k, "repeats": repeats,
            "identical": all(r == replies[0] for r in replies)}
