"""Generation as a stream of token ids: plain (k = 0) or MTP-speculative, with exact stop handling.

A generator in the manner of nanochat's `Engine.generate`: tokens are yielded as soon as a step
accepts them, one at a time, so a stop token or the token limit inside an accepted draft run ends the
stream exactly there (stop strings are the caller's, who sees every token). `stats` is filled live.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterable, Iterator

import torch

from daemon.engine.decode_stats import DecodeStats
from daemon.model.text_model import QwenModel
from daemon.engine.sampling import SamplingParams
from daemon.engine.speculative import SpeculativeDecoder
from daemon.engine.state_cache import PromptReuse


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # process high-water mark
    return rss if sys.platform == "darwin" else rss * 1024


def generate(model: QwenModel, prompt_ids: list[int], max_new_tokens: int, stop_ids: Iterable[int] = (), *,
             draft_k: int = 0, adaptive: bool = False, draft_vocab: int | None = None,
             sampling: SamplingParams = SamplingParams(), stats: DecodeStats | None = None,
             drafter=None, provenance: list[bool] | None = None, context: int | None = None,
             reuse: PromptReuse | None = None) -> Iterator[int]:
    """Yield up to `max_new_tokens` tokens; a stop token is yielded, then generation ends.

    draft_k = 0 decodes plainly; 1..4 drafts that many tokens per step with the MTP head, or at most
    that many with `adaptive` (see daemon.engine.draft_policy); `draft_vocab` limits drafts to the first ids.
    `provenance`, if given, gets one flag per yielded token, just before it is yielded: True for a
    drafted token the verifier accepted, False for a token the verifier produced itself. `context`
    caps prompt + reply below the model's own limit. With `reuse`, the prompt resumes from the longest
    cached snapshot that starts it, and snapshots are saved at the boundary and where the reply ends
    (daemon/engine/state_cache.py)."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    limit = min(context or model.config.max_position_embeddings, model.config.max_position_embeddings)
    if len(prompt_ids) >= limit:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context is {limit}")
    stats = stats if stats is not None else DecodeStats()
    stats.draft_k, stats.prompt_tokens = draft_k, len(prompt_ids)
    if max_new_tokens <= 0:
        stats.finish_reason = "length"
        return
    stop = set(stop_ids)
    budget = min(max_new_tokens, limit - len(prompt_ids))  # prompt + reply never exceed the context
    at_budget = "length" if budget == max_new_tokens else "context"
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    started = time.perf_counter()
    decoder = SpeculativeDecoder(model, prompt_ids, len(prompt_ids) + budget, draft_k=draft_k, adaptive=adaptive,
                                 draft_vocab=draft_vocab, sampling=sampling, drafter=drafter)
    stats.state_bytes = decoder.state_bytes()
    resume = reuse.lookup(prompt_ids, with_mtp=decoder.drafter is not None) if reuse else None
    stats.cached_tokens = len(resume.tokens) if resume else 0
    stats.prefill_tokens = len(prompt_ids) - stats.cached_tokens
    tokens = [decoder.prefill(resume, reuse.boundary if reuse else None, reuse.save if reuse else None)]
    stats.time_to_first_token_s = stats.prefill_s = time.perf_counter() - started
    decode_started = time.perf_counter()
    consistent = True  # false while a step runs: a step that raised leaves no state worth keeping
    try:
        while True:
            for index, token in enumerate(tokens):
                if provenance is not None:
                    provenance.append(index < len(tokens) - 1)  # all but a step's last token were drafts
                stats.generated_tokens += 1
                stats.decode_s = time.perf_counter() - decode_started
                yield token
                if token in stop:
                    stats.finish_reason = "stop"
                    return
                if stats.generated_tokens == budget:
                    stats.finish_reason = at_budget
                    return
            consistent = False
            tokens, drafted = decoder.step(budget - stats.generated_tokens)
            consistent = True
            if drafted:
                stats.record_verification(drafted, len(tokens) - 1)
    finally:
        stats.peak_memory_bytes = _peak_memory(model.device)
        if reuse is not None and consistent:  # also when the consumer stopped early (a cancel)
            reuse.save(decoder.snapshot())
