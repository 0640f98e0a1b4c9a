"""Repetition, presence and frequency penalties: what the tokens so far do to the next token's logits.

vLLM's semantics, which its users (and HF's, for the repetition penalty) know: the repetition penalty r
divides a positive logit by r and multiplies a negative one by r, for every token of the prompt or the
reply so far; the presence penalty is subtracted once from the logit of every token the reply holds,
the frequency penalty once per occurrence there (the prompt does not count for those two). They act on
the raw logits, before temperature, min-p, top-k and top-p (daemon/engine/sampling.py), so a greedy
decode takes the argmax of the penalised logits.

A verify pass scores k+1 positions at once, and position i follows the drafts before it: `apply` takes
those tokens (`following`) and counts them per row, so every verified position gets exactly the target
plain decoding would have computed there, which is all rejection sampling needs to stay lossless. The
drafter penalises its own rows the same way, for better acceptance; any draft distribution would do.
"""

from __future__ import annotations

import torch

from daemon.engine.sampling import SamplingParams


class Penalties:
    """One sequence's token history as the penalties read it; a no-op when the params set none.

    Only the tokens of the prompt and the reply (and the drafts being verified) can change a logit, so
    `apply` works on those columns alone — a few hundred of a 49k-248k vocabulary — and copies the rest:
    the same elementwise formula on the same values, so the result is what penalising every column gives,
    bit for bit, at a fraction of the cost (~0.4 ms a token on one core, over the whole vocabulary)."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], vocab_size: int, device: torch.device):
        self.params = params
        if params.penalised:
            self.in_prompt = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.in_prompt[torch.tensor(prompt_ids, dtype=torch.long, device=device)] = True
            self.counts = torch.zeros(vocab_size, dtype=torch.int32, device=device)  # occurrences in the reply
            self._seen = set(prompt_ids)
            self.ids = torch.tensor(sorted(self._seen), dtype=torch.long, device=device)  # every token so far

    def record(self, tokens: list[int]) -> None:
        """Count tokens the reply just emitted."""
        if self.params.penalised:
            index = torch.tensor(tokens, dtype=torch.long, device=self.counts.device)
            self.counts.index_add_(0, index, torch.ones_like(index, dtype=torch.int32))
            new = sorted(set(tokens) - self._seen)
            if new:
                self._seen.update(new)
                self.ids = torch.cat((self.ids, index.new_tensor(new)))

    def apply(self, logits: torch.Tensor, following: torch.Tensor | None = None) -> torch.Tensor:
        """Penalised logits [N, V'] (at least float32) from logits [N, V'], V' up to the full vocabulary (a
        reduced draft vocabulary reads its first V' ids). Row N-1 continues the recorded history by all of
        `following` [M] (M >= N-1: tokens not yet recorded), each earlier row by one token fewer."""
        params = self.params
        if not params.penalised:
            return logits
        rows, vocab = logits.shape
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        extra = 0 if following is None else following.shape[0]
        assert extra >= rows - 1, "every row but the first follows a token of `following`"
        ids = self.ids if not extra else torch.cat((self.ids, following)).unique()
        if vocab < self.counts.shape[0]:  # a reduced draft vocabulary: its first `vocab` ids only
            ids = ids[ids < vocab]
        counts = self.counts[ids][None]  # [1, m]
        if extra:
            # how often each id is among the first j tokens of `following`; row r follows M+1-N+r of them
            hits = (following[:, None] == ids[None, :]).to(torch.int32)  # [M, m]
            before = torch.cat((torch.zeros_like(hits[:1]), hits.cumsum(0, dtype=torch.int32)))  # [M+1, m]
            counts = counts + before[extra + 1 - rows:]
        counts = counts.to(logits.dtype)
        present = counts > 0
        penalised = logits[:, ids]
        if params.repetition_penalty != 1:
            scaled = torch.where(penalised > 0, penalised / params.repetition_penalty,
                                 penalised * params.repetition_penalty)
            penalised = torch.where(present | self.in_prompt[ids], scaled, penalised)
        if params.frequency_penalty:
            penalised = penalised - params.frequency_penalty * counts
        if params.presence_penalty:
            penalised = penalised - params.presence_penalty * present.to(logits.dtype)
        return logits.index_copy(1, ids, penalised)
