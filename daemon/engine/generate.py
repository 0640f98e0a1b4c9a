"""Generation as a stream of steps: plain (k = 0) or MTP-speculative, with exact stop handling.

A generator in the manner of nanochat's `Engine.generate`: iterating a `Generation` yields one `Step`
per token as soon as a decode step accepts it — the token and how it was produced (an MTP draft the
verifier accepted, or the verifier's own token) — so a stop token or the token limit inside an
accepted draft run ends the stream exactly there (stop strings are the caller's, who sees every
token). With a prefill chunk it also yields PREFILLING after each part of the prompt but the last, so
a server can step other streams in between. `stats` belongs to the generation and is live while it runs.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from daemon.engine.decode_stats import DecodeStats
from daemon.engine.options import GenerationOptions
from daemon.engine.speculative import SpeculativeDecoder
from daemon.engine.state_cache import PromptReuse
from daemon.model.text_model import QwenModel


@dataclass(frozen=True)
class Step:
    token: int | None  # None: a part of a chunked prefill ran, no token yet (PREFILLING)
    drafted: bool  # True: an MTP draft the verifier accepted; False: a token the verifier produced itself


PREFILLING = Step(None, False)  # yielded between prefill parts when `options.prefill_chunk` is set


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # process high-water mark
    return rss if sys.platform == "darwin" else rss * 1024


class Generation:
    """Iterate for up to `options.max_tokens` `Step`s; a stop token is yielded, then generation ends.

    The prompt is checked at once (ValueError). `context` in the options caps prompt + reply below the
    model's own limit. With `reuse`, the prompt resumes from the longest cached snapshot that starts
    it, and snapshots are saved at the boundary and where the reply ends (daemon/engine/state_cache.py).
    `drafter` replaces the MTP drafter (tests and benchmarks: daemon/tools/oracle_drafter.py)."""

    def __init__(self, model: QwenModel, prompt_ids: list[int], options: GenerationOptions = GenerationOptions(),
                 stop_ids: Iterable[int] = (), *, drafter=None, reuse: PromptReuse | None = None):
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        limit = min(options.context or model.config.max_position_embeddings, model.config.max_position_embeddings)
        if len(prompt_ids) >= limit:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context is {limit}")
        self.stats = DecodeStats(draft_k=options.draft_k, prompt_tokens=len(prompt_ids))
        self._steps = self._run(model, prompt_ids, options, set(stop_ids), limit, drafter, reuse)

    def __iter__(self) -> Iterator[Step]:
        return self

    def __next__(self) -> Step:
        return next(self._steps)

    def tokens(self) -> list[int]:
        """Run to the end; the token ids."""
        return [step.token for step in self._steps if step is not PREFILLING]

    def close(self) -> None:
        """Stop early (the consumer cancelled); the state reached so far is still saved for reuse."""
        self._steps.close()

    def _run(self, model: QwenModel, prompt_ids: list[int], options: GenerationOptions, stop: set[int], limit: int,
             drafter, reuse: PromptReuse | None) -> Iterator[Step]:
        stats = self.stats
        if options.max_tokens == 0:
            stats.finish_reason = "length"
            return
        budget = min(options.max_tokens, limit - len(prompt_ids))  # prompt + reply never exceed the context
        if model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(model.device)
        started = time.perf_counter()
        decoder = SpeculativeDecoder(model, prompt_ids, len(prompt_ids) + budget, options, drafter=drafter)
        try:
            yield from self._decode(decoder, options, stop, budget, reuse, started)
        finally:
            decoder.close()  # the GPU lane it may hold goes to the next sequence, also after a cancel or a fault

    def _decode(self, decoder: SpeculativeDecoder, options: GenerationOptions, stop: set[int], budget: int,
                reuse: PromptReuse | None, started: float) -> Iterator[Step]:
        stats, model, prompt_ids = self.stats, decoder.model, decoder.prompt_ids
        at_budget = "length" if budget == options.max_tokens else "context"
        stats.state_bytes = decoder.state_bytes()  # live stats: what is allocated now, measured again at the end
        resume = reuse.lookup(prompt_ids, with_mtp=decoder.drafter is not None) if reuse else None
        stats.cached_tokens = len(resume.tokens) if resume else 0
        stats.prefill_tokens = len(prompt_ids) - stats.cached_tokens
        parts = decoder.prefill_chunks(resume, reuse.boundary if reuse else None, reuse.save if reuse else None,
                                       options.prefill_chunk)
        for cached in parts:
            if cached < len(prompt_ids) and options.prefill_chunk:
                yield PREFILLING
        tokens = [decoder.token]
        stats.time_to_first_token_s = stats.prefill_s = time.perf_counter() - started
        decode_started = time.perf_counter()
        consistent = True  # false while a step runs: a step that raised leaves no state worth keeping
        try:
            while True:
                for index, token in enumerate(tokens):
                    stats.generated_tokens += 1
                    stats.decode_s = time.perf_counter() - decode_started
                    # the reason is set before the last step is yielded: a consumer that stops there sees it
                    if token in stop:
                        stats.finish_reason = "stop"
                    elif stats.generated_tokens == budget:
                        stats.finish_reason = at_budget
                    yield Step(token, drafted=index < len(tokens) - 1)  # all but a step's last token were drafts
                    if stats.finish_reason:
                        return
                consistent = False
                tokens, drafted = decoder.step(budget - stats.generated_tokens)
                consistent = True
                if drafted:
                    stats.record_verification(drafted, len(tokens) - 1)
        finally:
            stats.state_bytes = decoder.state_bytes()  # attention caches grew as the reply did
            stats.peak_memory_bytes = _peak_memory(model.device)
            if reuse is not None and consistent:  # also when the consumer stopped early (a cancel)
                reuse.save(decoder.snapshot())
