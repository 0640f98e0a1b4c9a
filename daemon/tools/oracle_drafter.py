"""A drafter that knows the answer: for measuring the engine independently of head quality.

It runs the real MTP head — same cache, chaining and cost as `MTPDrafter` — but replaces each draft
with the known plain continuation, made wrong wherever `errs(step, slot)` says so. With errors at a
set rate it tells what speed-up the engine gives at a given acceptance; with scripted errors it
drives every accept pattern in tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from daemon.engine.drafter import MTPDrafter


class OracleDrafter(MTPDrafter):
    def __init__(self, model, max_len: int, truth: list[int], errs: Callable[[int, int], bool],
                 vocab: int | None = None):
        """truth: prompt + plain continuation; errs(step, slot): draft `slot` of step `step` is wrong."""
        super().__init__(model, max_len, vocab)
        self.truth, self.errs = truth, errs
        self.steps = 0
        self._next_index = 0  # index in truth of the token the next slot-0 draft predicts

    def extend(self, hidden, next_tokens, start) -> None:
        super().extend(hidden, next_tokens, start)
        self._next_index = start + next_tokens.shape[1] + 1  # the last pair (h_i, t_i+1) predicts t_i+2

    def propose(self, k, params, generator, penalties=None):
        drafts = super().propose(k, params, generator, penalties)
        self.steps += 1
        return drafts

    def choose(self, logits, params, generator, slot):
        token = self.truth[self._next_index + slot]
        if self.errs(self.steps, slot):
            token = (token + 1) % logits.shape[-1]
        return torch.tensor([token], device=logits.device), None
