"""Token choice: the target distribution q, and lossless verification of drafted tokens against it.

q is the model's next-token distribution after temperature, top-k and top-p (temperature 0 means
greedy: q is a point mass on the argmax). Every setting the protocol accepts gives a finite q: a
temperature below GREEDY_BELOW decodes greedily (so dividing by it never overflows), and top-p always
keeps the most likely token (a top_p that rounds to 0 in float32 is top-1). Drafts are verified by speculative rejection sampling: draft
x drawn from p is accepted with probability min(1, q(x)/p(x)); on rejection the token comes from
norm(max(0, q − p)); after a full accept the bonus token comes from q. A greedy draft is a point mass
p, so a greedy target accepts exactly while draft == argmax. The output is distributed exactly as q.
Repetition penalty is not supported. All draws go through one seeded generator: runs are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Temperatures below this are greedy: dividing logits (float32 resolution ~1e-6 at magnitude ~10) by
# anything smaller only separates near-ties, and a temperature that rounds to 0 in float32 would divide 0 by 0.
GREEDY_BELOW = 1e-6


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Distributions [N, V] (float32) from logits [N, V] under the sampling parameters."""
    logits = logits.float()
    if params.greedy:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / params.temperature  # finite: temperature >= GREEDY_BELOW (softmax then shifts by the max)
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        outside = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p
        outside[..., 0] = False  # explicitly: a top_p that rounds to 0 in float32 would drop them all
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of probs [N, V]."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None):
    """Tokens [N] from logits [N, V]: the argmax when greedy, else a draw from q. Also returns q
    [N, V] (None when greedy), which a drafted token's verification needs."""
    if params.greedy:
        return logits.argmax(-1), None
    probs = target_probs(logits, params)
    return sample(probs, generator), probs


def verify_greedy(drafts: torch.Tensor, logits: torch.Tensor) -> tuple[int, int]:
    """Greedy target: accept drafts [k] while they equal the argmax of logits [k+1, V]."""
    target = logits.argmax(-1)
    accepted = int((drafts == target[:-1]).to(torch.int64).cumprod(0).sum())
    return accepted, int(target[accepted])


def verify_drafts(drafts: torch.Tensor, draft_probs: torch.Tensor | None, target: torch.Tensor,
                  generator: torch.Generator | None) -> tuple[int, int]:
    """Accept a prefix of drafts [k] against target distributions [k+1, V].

    draft_probs [k, V] are the distributions the drafts were sampled from, or None for greedy drafts
    (point masses). Returns (number accepted, the token that follows them).
    """
    k = drafts.shape[0]
    rows = torch.arange(k, device=drafts.device)
    q = target[rows, drafts]
    p = torch.ones_like(q) if draft_probs is None else draft_probs[rows, drafts]
    uniform = torch.rand(k, generator=generator, device=drafts.device)
    accepted = int((uniform * p < q).to(torch.int64).cumprod(0).sum())  # u < q/p, without dividing by 0
    if accepted == k:
        return k, int(sample(target[k:k + 1], generator))
    if draft_probs is None:
        residual = target[accepted].clone()
        residual[drafts[accepted]] = 0.0
    else:
        residual = (target[accepted] - draft_probs[accepted]).clamp_min(0.0)
    if residual.sum() <= 0:  # q == p exactly: any rejection is measure-zero; fall back to q
        residual = target[accepted]
    return accepted, int(sample(residual[None] / residual.sum(), generator))
