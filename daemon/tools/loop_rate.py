"""`mtpchatd loops`: how often replies fall into a repeated n-gram loop, greedy vs the model's own
sampling defaults, and what MTP decoding gives under those defaults.

Why: a small chat model decoded greedily tends to repeat itself ("a cat, a cat, a cat, …") until the
token limit; the demo ships sampling defaults (a low temperature, top-p and a mild repetition penalty:
daemon/weights/demo_model.py) to stop that, and MTP under sampling is what the product runs. This puts
numbers on both, on prompts the model's MTP head never trained on: the held-out part of its training
prompt sample (daemon.tools.train_head.held_out_prompts: texts and multi-turn conversations), asked
with thinking off.

Every reply takes the daemon's own path, daemon.serve.scheduler.local_reply (without the conversation
state cache): a wire request (no sampling field set, so the model's defaults apply) becomes the
engine's options — the model's configured draft setting and draft vocabulary, its sampling defaults
for thinking off — and `ReplyStream` decodes it up to the stop token or `max_tokens`. Per prompt and
seed: the greedy reply (every sampling field at the engine's built-in value: the argmax of the raw
logits, at the model's draft setting), then the reply at the defaults decoded plain (draft 0) and
with MTP, alternating as `mtpchatd bench` does (daemon/tools/bench.py); decode tok/s is timed by the
generation itself, from the first token to the last.

Under sampling, MTP is lossless in distribution, not token for token: the same seed draws the same
first token, but drafting and rejection sampling then use the generator's draws differently, so the
replies part (tests/test_sampling.py proves the distributions equal). Plain and MTP replies are two
samples of one distribution, and their loop shares should agree within noise; `same_tokens_as_plain`
counts the seeds where they happened to coincide.

The loop rule (`find_loop`): a reply loops when some block of p tokens, 1 <= p <= MAX_PERIOD (32),
stands at least MIN_REPEATS (3) times back to back, the whole copies covering at least MIN_TOKENS (16)
tokens: a 16-token run of one token loops, a 5-token phrase needs 4 copies, two copies of anything never
loop. Counted on token ids, so it sees what the model repeats whatever the tokenizer does to spaces.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from daemon.engine.decode_stats import DecodeStats
from daemon.engine.reply import prompt_messages
from daemon.engine.sampling import SamplingParams
from daemon.serve.registry import ModelEntry
from daemon.serve.scheduler import local_reply
from daemon.tools.bench import summarize, with_ratios
from mtpchat.machine import machine
from mtpchat.protocol import SAMPLING_FIELDS, GenerateRequest

MAX_PERIOD = 32  # longest repeated block looked for, in tokens
MIN_REPEATS = 3  # whole copies of the block in a row
MIN_TOKENS = 16  # tokens those copies must cover
# greedy: the engine's built-in sampling (argmax of the raw logits, no penalty), set in full so that none
# of the model's defaults (the demo's repetition penalty) applies
GREEDY = {name: getattr(SamplingParams(), name) for name in SAMPLING_FIELDS}


@dataclass(frozen=True)
class Loop:
    start: int  # index of the first token of the first copy
    period: int  # tokens per copy
    repeats: int  # whole copies in a row


def find_loop(tokens: Sequence[int]) -> Loop | None:
    """The earliest loop in `tokens` (the shortest period among those starting there), or None."""
    found = []
    for period in range(1, MAX_PERIOD + 1):
        start = 0
        for end in range(len(tokens) - period + 1):
            if end < len(tokens) - period and tokens[end] == tokens[end + period]:
                continue
            # tokens[start:end + period] repeats with this period: tokens[i] == tokens[i + period], start <= i < end
            repeats = (end - start + period) // period
            if repeats >= MIN_REPEATS and repeats * period >= MIN_TOKENS:
                found.append(Loop(start, period, repeats))
                break
            start = end + 1
    return min(found, key=lambda loop: (loop.start, loop.period), default=None)


def _reply(entry: ModelEntry, request: GenerateRequest) -> tuple[list[int], DecodeStats]:
    """The reply's token ids (without the stop token) and stats, as the daemon would decode the request."""
    stream = local_reply(request, entry)
    for _ in stream:
        pass
    return stream.result.token_ids, stream.result.stats


def _described(tokenizer, seed: int, tokens: list[int], stats: DecodeStats) -> dict:
    loop = find_loop(tokens)
    if loop is not None:
        loop = {"start": loop.start, "period": loop.period, "repeats": loop.repeats,
                "text": tokenizer.decode(tokens[loop.start:loop.start + loop.period])}
    return {"seed": seed, "tokens": tokens, "finish_reason": stats.finish_reason, "loop": loop,
            "decode_tok_s": stats.decode_tok_s}


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def _share_looping(replies: list[dict]) -> float:
    return sum(reply["loop"] is not None for reply in replies) / len(replies)


def _timing(entry: ModelEntry, plain: list[DecodeStats], mtp: list[DecodeStats]) -> dict:
    """bench's summary of plain vs MTP over all runs (rates over summed counts, `speedup` from those),
    plus the median and range of per-run decode tok/s and of the per-run speed-up (MTP over plain on the
    same prompt and seed), over runs that decoded more than their first token."""
    result = with_ratios(summarize(plain), {entry.settings.draft: summarize(mtp)})
    pairs = [(p.decode_tok_s, m.decode_tok_s) for p, m in zip(plain, mtp, strict=True)
             if p.decode_tok_s and m.decode_tok_s]
    if pairs:
        result["plain"]["decode_tok_s_per_run"] = _spread([p for p, _ in pairs])
        for summary in result["mtp"].values():
            summary["decode_tok_s_per_run"] = _spread([m for _, m in pairs])
            summary["speedup_per_run"] = _spread([m / p for p, m in pairs])
    return result


def measure_loops(entry: ModelEntry, texts: list[str | list[dict]], max_tokens: int, seeds: int) -> dict:
    """Per prompt (a text, or a conversation: a list of messages) and seed: greedy, then plain and MTP at
    the model's defaults (see the module docstring)."""
    before = machine() | {"threads": torch.get_num_threads()}

    def request(prompt: str | list[dict], seed: int, **fields) -> GenerateRequest:
        return GenerateRequest("loops", tuple(prompt_messages(prompt)), seed=seed, thinking=False,
                               **{"max_tokens": max_tokens, **fields})

    _reply(entry, request(texts[0], 0, max_tokens=4))  # warm-up
    by_prompt, plain_runs, mtp_runs = [], [], []
    for text in texts:
        replies = {"greedy": [], "plain": [], "mtp": []}
        for seed in range(seeds):
            greedy = _reply(entry, request(text, seed, **GREEDY))
            replies["greedy"].append(_described(entry.tokenizer, seed, *greedy))
            plain_tokens, plain_stats = _reply(entry, request(text, seed, draft=0))
            tokens, stats = _reply(entry, request(text, seed))
            plain_runs.append(plain_stats)
            mtp_runs.append(stats)
            replies["plain"].append(_described(entry.tokenizer, seed, plain_tokens, plain_stats))
            replies["mtp"].append(_described(entry.tokenizer, seed, tokens, stats)
                                  | {"same_tokens_as_plain": tokens == plain_tokens})
        by_prompt.append({"prompt": text, **replies})
    every = {mode: [reply for prompt in by_prompt for reply in prompt[mode]] for mode in ("greedy", "plain", "mtp")}
    return {
        "prompts": len(texts), "seeds": seeds, "max_tokens": max_tokens,
        "sampling_defaults": entry.sampling_defaults(thinking=False),
        "draft": entry.settings.draft, "draft_vocab": entry.settings.draft_vocab,
        "loop_share": {mode: _share_looping(replies) for mode, replies in every.items()},
        "mtp_same_tokens_as_plain": sum(reply["same_tokens_as_plain"] for reply in every["mtp"]),
        "timing": _timing(entry, plain_runs, mtp_runs),
        "machine": before | {"load_average_after": os.getloadavg()},
        "by_prompt": by_prompt,
    }
