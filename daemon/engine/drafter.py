"""Drafting with the checkpoint's own MTP head.

The MTP layer's KV cache must hold, at every position i, the pair (trunk hidden h_i, token t_{i+1}).
After prefill and after every verification the decoder hands the drafter the pairs it has not seen
yet (`extend`); the next `propose` runs them through the MTP layer in one pass — which also yields
the first draft — then chains: the MTP output (after its norm) is the next hidden and the drafted
token the next input. Chained drafts write provisional KV entries past the accepted position; the
next `extend` overwrites them with the true pairs, so the cache always matches what was accepted.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from daemon.engine.graph_lane import GraphLane
from daemon.engine.penalties import Penalties
from daemon.engine.sampling import SamplingParams, choose
from daemon.engine.step_functions import step_functions
from daemon.model.text_model import QwenModel


class MTPDrafter:
    def __init__(self, model: QwenModel, max_len: int, vocab: int | None = None, initial_len: int | None = None,
                 lane: GraphLane | None = None):
        """vocab: draft only among token ids [0, vocab) — BPE ids are roughly in frequency order — which
        makes the MTP lm_head proportionally cheaper; verification still uses the full vocabulary.
        lane: the sequence's GPU lane, whose MTP cache and captured draft step it then uses."""
        self.model, self.vocab = model, vocab
        self.forwards = lane or step_functions(model)
        self.cache = lane.mtp_cache if lane else model.new_mtp_cache(max_len, initial_len=initial_len)
        self._pending: tuple[torch.Tensor, torch.Tensor, int] | None = None

    def extend(self, hidden: torch.Tensor, next_tokens: torch.Tensor, start: int) -> None:
        """Queue pairs (hidden [1, m, H] at positions start.., next_tokens [1, m]) after any queued ones."""
        if self._pending is not None:
            queued_hidden, queued_tokens, queued_start = self._pending
            assert queued_start + queued_tokens.shape[1] == start, "MTP pairs must be contiguous"
            hidden = torch.cat((queued_hidden, hidden), dim=1)
            next_tokens = torch.cat((queued_tokens, next_tokens), dim=1)
            start = queued_start
        self._pending = (hidden, next_tokens, start)

    @torch.inference_mode()
    def settle(self) -> None:
        """Write every queued pair but the last into the MTP cache now: the cache then covers exactly
        the pairs whose two halves lie in the trunk cache, and the last pair waits for `propose`."""
        hidden, tokens, start = self._pending
        if tokens.shape[1] > 1:
            self.model.mtp_forward(tokens[:, :-1], hidden[:, :-1], self.cache, start, last_only=True)
            self._pending = (hidden[:, -1:], tokens[:, -1:], start + tokens.shape[1] - 1)

    @property
    def last_hidden(self) -> torch.Tensor:
        """The trunk hidden of the last queued pair: what a snapshot needs to resume drafting."""
        return self._pending[0][:, -1:]

    def choose(self, logits: torch.Tensor, params: SamplingParams, generator, slot: int):
        """Draft token for draft slot `slot` from MTP logits [1, V], and its distribution (None if greedy)."""
        token, probs = choose(logits, params, generator)
        if probs is None:
            return token, None
        return token, F.pad(probs, (0, self.model.config.vocab_size - probs.shape[-1]))  # p = 0 outside

    @torch.inference_mode()
    def propose(self, k: int, params: SamplingParams, generator: torch.Generator | None,
                penalties: Penalties | None = None):
        """k draft tokens [k], and the distributions [k, V] they were sampled from (None if greedy). With
        `penalties` (the sequence's), each draft's logits are penalised as the target's will be, the drafts
        before it included: closer to the target, so more drafts are accepted."""
        hidden, tokens, start = self._pending
        self._pending = None
        logits, out = self.forwards.mtp(tokens, hidden, self.cache, start, vocab=self.vocab)
        position = start + tokens.shape[1]
        drafts = torch.empty(0, dtype=torch.long, device=logits.device)
        probs = []
        for slot in range(k):
            if slot:  # chain: the last draft is the input, the MTP output the hidden
                logits, out = self.forwards.mtp(drafts[-1:][None], out[:, -1:], self.cache, position, vocab=self.vocab)
                position += 1
            row = logits[0, -1:] if penalties is None else penalties.apply(logits[0, -1:], drafts)
            token, dist = self.choose(row, params, generator, slot)
            drafts = torch.cat((drafts, token))
            probs.append(dist)
        return drafts, None if params.greedy else torch.cat(probs)
