"""One sequence's decoding state and its step: plain (k = 0) or MTP-speculative (k ≥ 1).

A speculative step drafts k tokens with the MTP head, verifies [last token, drafts] in ONE trunk
forward of k+1 tokens that records the DeltaNet state after each of them, accepts the longest prefix
the target agrees with, and emits the accepted drafts plus one token from the target (the correction
or the bonus). Rollback: attention caches just do not advance past the accepted position; DeltaNet
state and conv window are restored from the verify pass's per-token slot — no replay, no host copy.
Plain decoding is the same object with k = 0, so comparisons between the two are fair. On a GPU the
decoder runs in the model's graph lane when it is free (replayed forwards in the lane's caches,
daemon/engine/graph_lane.py) and `close` gives it back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from daemon.engine.draft_policy import AdaptiveDraft, FixedDraft
from daemon.engine.drafter import MTPDrafter
from daemon.engine.graph_lane import graph_lane
from daemon.engine.options import GenerationOptions
from daemon.engine.penalties import Penalties
from daemon.engine.sampling import choose, target_probs, verify_drafts, verify_greedy
from daemon.engine.state_cache import Snapshot
from daemon.engine.step_functions import step_functions
from daemon.model.text_model import QwenModel

FIRST_REPLY_TOKENS = 256  # reply positions the caches hold at first; they double when a reply outgrows them


class SpeculativeDecoder:
    """Holds the caches; `length` tokens are in the trunk cache, `token` is emitted but not yet in it.

    `capacity` bounds the positions a step may write (prompt + the tokens still to be emitted)."""

    def __init__(self, model: QwenModel, prompt_ids: list[int], capacity: int,
                 options: GenerationOptions = GenerationOptions(), drafter: MTPDrafter | None = None):
        """Reads the options' draft settings (draft_k 0 = plain) and sampling; `drafter` replaces the MTP one."""
        draft_k = options.draft_k
        if draft_k and model.mtp is None and drafter is None:
            raise ValueError("this checkpoint has no MTP head: use plain decoding (draft k = 0)")
        self.model, self.prompt_ids, self.capacity = model, prompt_ids, capacity
        self.sampling = sampling = options.sampling
        self.policy = AdaptiveDraft(draft_k) if options.adaptive and draft_k else FixedDraft(draft_k)
        self.after_plain = False  # the last step was plain: the drafter holds pairs queued without drafting
        self.generator = None
        if sampling.seed is not None:
            self.generator = torch.Generator(model.output_device).manual_seed(sampling.seed)
        self.ids = list(prompt_ids)  # every token so far: the cache holds ids[:length], then `token`
        self.penalties = Penalties(sampling, prompt_ids, model.config.vocab_size, model.output_device)
        self.length = 0
        self.token = -1
        # On a GPU, the model's captured forwards and their caches, when free: taken last, as nothing after
        # this allocates with a lane (nothing can fail and leave it taken before `close` can give it back).
        lane = graph_lane(model)
        self.lane = lane if lane is not None and lane.acquire(capacity, draft_k) else None
        self.forwards = self.lane or step_functions(model)  # decode and verify forwards: replayed, compiled or eager
        initial = min(capacity, len(prompt_ids) + FIRST_REPLY_TOKENS)  # the caches grow from there as needed
        with torch.inference_mode():  # inference tensors, as the steps that grow them make: one kind for compiled steps
            self.cache = self.lane.cache if self.lane else model.new_cache(
                capacity, max_steps=draft_k + 1 if draft_k else 0, initial_len=initial)
            self.drafter = (drafter or MTPDrafter(model, capacity, options.draft_vocab, initial, lane=self.lane)
                            ) if draft_k else None

    def close(self) -> None:
        """Done decoding: a lane goes back to the model (its caches are the next sequence's)."""
        if self.lane is not None:
            self.lane.release()
            self.lane = None

    def state_bytes(self) -> int:
        """Memory of the decoding state: trunk caches (+ DeltaNet step slots) and the MTP layer's cache."""
        return self.cache.nbytes() + (self.drafter.cache.nbytes() if self.drafter else 0)

    def _choose(self, logits: torch.Tensor) -> int:
        """The next token from the last position's logits [V]."""
        return int(choose(self.penalties.apply(logits[None]), self.sampling, self.generator)[0])

    def _emit(self, tokens: list[int]) -> None:
        self.ids.extend(tokens)
        self.penalties.record(tokens)

    def prefill(self) -> int:
        """Run the whole prompt in one go (see `prefill_chunks`); return the first generated token."""
        for _ in self.prefill_chunks():
            pass
        return self.token

    def prefill_chunks(self, resume: Snapshot | None = None, boundary: int | None = None,
                       on_boundary: Callable[[Snapshot], object] | None = None, chunk: int = 0) -> Iterator[int]:
        """Run the prompt (from `resume` on, when given: a snapshot of a prefix of it), yielding the
        number of prompt tokens in the cache after each part; at the end `token` is the first generated
        one. With `chunk`, parts hold at most that many tokens, so a caller can interleave other work
        between them. With `boundary`, a part ends there and `on_boundary` gets a snapshot of the
        state after the first `boundary` tokens."""
        start = 0
        if resume is not None:
            start = self._restore(resume)
        end = len(self.prompt_ids)
        cuts = {cut for cut in (boundary,) if cut is not None and start < cut < end}
        if chunk:
            cuts.update(range(start + chunk, end, chunk))
        for cut in [*sorted(cuts), end]:
            with torch.inference_mode():
                self._prefill_part(start, cut, boundary, on_boundary)
            start = cut
            yield cut
        self._emit([self.token])

    def _prefill_part(self, start: int, cut: int, boundary: int | None,
                      on_boundary: Callable[[Snapshot], object] | None) -> None:
        """Prompt tokens [start, cut) into the caches; at the prompt's end, choose the first token."""
        ids = torch.tensor([self.prompt_ids[start:cut]], device=self.model.device)
        logits, hidden = self.model(ids, self.cache, start, last_only=True)
        self.length = cut
        if cut == len(self.prompt_ids):
            self.token = self._choose(logits[0, -1])
            if self.drafter:
                self.drafter.extend(hidden, self._tensor(self.prompt_ids[start + 1:] + [self.token]), start)
            return
        if self.drafter:
            self.drafter.extend(hidden, self._tensor(self.prompt_ids[start + 1:cut + 1]), start)
            self.drafter.settle()  # the MTP layer follows part by part, not in one long pass at the end
        if cut == boundary and on_boundary is not None:
            on_boundary(self.snapshot())

    def _tensor(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids], device=self.model.device)

    @torch.inference_mode()
    def _restore(self, snapshot: Snapshot) -> int:
        """Load a snapshot's state; the position prefill continues from."""
        length = len(snapshot.tokens)
        self.cache.restore(snapshot.trunk)
        if self.drafter:
            self.drafter.cache.restore(snapshot.mtp)
            self.drafter.extend(snapshot.last_hidden, self._tensor([self.prompt_ids[length]]), length - 1)
        return length

    @torch.inference_mode()
    def snapshot(self) -> Snapshot:
        """The state for ids[:length]: what a later prompt starting with those tokens can resume from."""
        mtp = last_hidden = None
        if self.drafter:
            self.drafter.settle()
            mtp = self.drafter.cache.capture(self.length - 1)
            last_hidden = self.drafter.last_hidden.clone()
        return Snapshot(tuple(self.ids[:self.length]), self.cache.capture(self.length), mtp, last_hidden)

    @torch.inference_mode()
    def step(self, max_tokens: int) -> tuple[list[int], int]:
        """Emit 1..min(k+1, max_tokens) tokens; also return how many drafts were verified (all but the
        last emitted token were accepted drafts)."""
        started = time.perf_counter()
        k = min(self.policy.choose(), max_tokens - 1, self.capacity - self.length - 1)
        if k <= 0:
            logits, hidden = self.forwards.trunk(torch.tensor([[self.token]], device=self.model.device), self.cache,
                                              self.length)
            self.token = self._choose(logits[0, -1])
            self.policy.update(0, 0, time.perf_counter() - started)  # `_choose` synced the device
            if self.drafter:  # keep the MTP cache complete for a later speculative step
                self.drafter.extend(hidden, torch.tensor([[self.token]], device=self.model.device), self.length)
                self.after_plain = True
            self.length += 1
            self._emit([self.token])
            return [self.token], 0
        if self.after_plain:  # the pairs plain steps queued: their MTP pass is theirs, not this step's cost
            self.drafter.settle()
            self.after_plain, started = False, time.perf_counter()
        drafts, draft_probs = self.drafter.propose(k, self.sampling, self.generator, self.penalties)
        verify_ids = torch.cat((torch.tensor([self.token], device=drafts.device), drafts))[None]
        logits, hidden = self.forwards.trunk(verify_ids, self.cache, self.length, keep_steps=True)
        target = self.penalties.apply(logits[0], drafts)  # row i: penalised as if drafts[:i] were accepted
        if self.sampling.greedy:
            accepted, following = verify_greedy(drafts, target)
        else:
            accepted, following = verify_drafts(drafts, draft_probs, target_probs(target, self.sampling),
                                                self.generator)
        self.policy.update(k, accepted, time.perf_counter() - started)  # `accepted` synced the device
        if accepted < k:
            self.cache.restore_step(accepted)
        emitted = drafts[:accepted].tolist() + [following]
        next_tokens = torch.tensor([emitted], device=drafts.device)
        self.drafter.extend(hidden[:, :accepted + 1], next_tokens, self.length)
        self.length += accepted + 1
        self.token = following
        self._emit(emitted)
        return emitted, k
