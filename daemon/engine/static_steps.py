"""Fixed-shape greedy decoding steps over static buffers: what a CUDA graph or torch.compile captures.

Every step reads and writes only preallocated tensors — the position, the last token, the drafts and
what a step emitted live on the device — so a step has no data-dependent Python control flow and no
host synchronisation: one captured step serves every position. Three kinds, one shape each:
- `verify_step(k)`: the (k+1)-token trunk pass over [token, drafts[:k]] (k = 0: the 1-token decode),
  the greedy accept count, the DeltaNet rollback to that count's step slot, and — with an MTP head —
  the MTP layer over all k+1 pairs, which both fills its KV cache and gives the next step's first
  draft. Pair j is (h_{L+j}, argmax_{L+j}): for every accepted position the argmax IS the next token
  (an accepted draft equals it, the correction is it), so the true pairs are known without knowing
  the count; pairs past it are provisional and are overwritten before any query can see them.
- `draft_step(k)`: drafts 1..k-1, chaining the MTP head from drafts[0] (nothing to do for k = 1).
- `prefill`: the prompt, eager (its length varies), into the same buffers.
Greedy only: sampling and repetition penalties stay with the eager `SpeculativeDecoder`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from daemon.model.cache import AttentionCache, ModelCache
from daemon.model.text_model import QwenModel


@dataclass
class StepBuffers:
    length: torch.Tensor  # [1] int64: tokens in the trunk cache (positions 0..length-1)
    token: torch.Tensor  # [1] int64: the last emitted token, not yet in the trunk cache
    drafts: torch.Tensor  # [max(k, 1)] int64: drafts for the next verify; drafts[0] from the last MTP pass
    mtp_hidden: torch.Tensor  # [1, 1, H]: the MTP output behind drafts[0], the chain's next hidden
    emitted: torch.Tensor  # [k + 1] int64: the last step's argmax tokens; its first accepted + 1 were emitted
    accepted: torch.Tensor  # [1] int64: drafts the last step accepted

    @classmethod
    def allocate(cls, model: QwenModel, k: int) -> StepBuffers:
        device = model.output_device
        longs = lambda n: torch.zeros(n, dtype=torch.long, device=device)  # noqa: E731
        return cls(longs(1), longs(1), longs(max(k, 1)),
                   torch.zeros(1, 1, model.config.hidden_size, dtype=model.dtype, device=device),
                   longs(k + 1), longs(1))

    def zero_(self) -> None:
        for field in fields(self):
            getattr(self, field.name).zero_()


def prefill(model: QwenModel, cache: ModelCache, mtp_cache: AttentionCache | None, buffers: StepBuffers,
            prompt: torch.Tensor, vocab: int | None = None) -> None:
    """Prompt ids [1, P] into fresh caches; leaves the first generated token (and its draft) in `buffers`."""
    logits, hidden = model(prompt, cache, 0, last_only=True)
    token = logits[0, -1:].argmax(-1)
    buffers.token.copy_(token)
    buffers.length.fill_(prompt.shape[1])
    if mtp_cache is not None:
        next_ids = torch.cat((prompt[0, 1:].to(token.device), token))[None]
        mtp_logits, out = model.mtp_forward(next_ids, hidden, mtp_cache, 0, vocab=vocab, last_only=True)
        buffers.drafts[:1].copy_(mtp_logits[0, -1:].argmax(-1))
        buffers.mtp_hidden.copy_(out[:, -1:])


def verify_step(model: QwenModel, cache: ModelCache, mtp_cache: AttentionCache | None, buffers: StepBuffers,
                k: int, vocab: int | None = None) -> None:
    """Run [token, drafts[:k]] at positions length..length+k and advance past the accepted prefix + 1."""
    ids = torch.cat((buffers.token, buffers.drafts[:k]))[None]
    positions = buffers.length + torch.arange(k + 1, device=buffers.length.device)
    logits, hidden = model.forward_at(ids, cache, positions, keep_steps=k > 0)
    target = logits[0].argmax(-1)  # [k + 1]
    if k:
        # Drafts accepted while each equals the argmax before it; cumprod zeroes everything after a miss.
        accepted = (buffers.drafts[:k] == target[:k]).long().cumprod(0).sum(0, keepdim=True)
        cache.restore_step(accepted)  # the state after the last kept token: no replay
    else:
        # A literal zero, not the sum over no drafts: torch 2.13's inductor miscompiles the decode step
        # with that empty reduction (the emitted token stops following the input; test_static_steps).
        accepted = torch.zeros(1, dtype=torch.long, device=target.device)
    buffers.accepted.copy_(accepted)
    buffers.emitted.copy_(target)
    buffers.token.copy_(target.index_select(0, accepted))
    if mtp_cache is not None:
        mtp_logits, out = model.mtp_forward_at(target[None], hidden, mtp_cache, positions, vocab=vocab)
        buffers.drafts[:1].copy_(mtp_logits[0].index_select(0, accepted).argmax(-1))
        buffers.mtp_hidden.copy_(out.index_select(1, accepted))
    buffers.length.add_(accepted + 1)


def draft_step(model: QwenModel, mtp_cache: AttentionCache, buffers: StepBuffers, k: int,
               vocab: int | None = None) -> None:
    """Drafts 1..k-1: the MTP output is the next hidden, the last draft the next input, at positions
    length, length+1, ... (provisional MTP cache entries the next verify overwrites)."""
    hidden = buffers.mtp_hidden
    for slot in range(1, k):
        position = buffers.length + (slot - 1)
        logits, hidden = model.mtp_forward_at(buffers.drafts[slot - 1:slot][None], hidden, mtp_cache, position,
                                              vocab=vocab)
        buffers.drafts[slot:slot + 1].copy_(logits[0].argmax(-1))
