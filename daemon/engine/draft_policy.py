"""Choosing the draft length k for each speculative step.

`FixedDraft` always drafts k. `AdaptiveDraft` picks, each step, the k ≤ k_max with the highest expected
tokens per second: expected tokens E(k) = 1 + Σ_{j≤k} Π_{i≤j} c_i from the running conditional
acceptance c_i of draft position i, over the measured seconds a step of k costs (draft steps plus the
(k+1)-token verify, timed on the steps actually run). k = 0 — a plain step — is a candidate too: where
drafts are rarely accepted (sampling with penalties on a small model's head) drafting costs more than
it gives, and "auto" should then cost no more than its periodic exploration over no MTP. Counts decay so
the policy follows the content (code drafts better than prose); every k is timed once at the start, and
every `explore_every` steps a neighbour of the best k (one shorter or one longer, whichever ran less
recently) is run again, so the estimates around the choice stay fresh and the policy can climb to longer
drafts when acceptance rises, without paying for the longest drafts while the best is a plain step (on
the demo model under its sampling defaults, re-running every k in turn spent about a tenth of the steps
on drafts of 2-4).
"""

from __future__ import annotations


class FixedDraft:
    def __init__(self, k: int):
        self.k_max = k

    def choose(self) -> int:
        return self.k_max

    def update(self, k: int, accepted: int, seconds: float) -> None:
        pass


class AdaptiveDraft:
    def __init__(self, k_max: int, decay: float = 0.95, explore_every: int = 16, prior: float = 0.7):
        self.k_max, self.decay, self.explore_every = k_max, decay, explore_every
        # pseudo-counts: a weak prior that each position is accepted with probability `prior`
        self.accepted = [prior] * k_max
        self.reached = [1.0] * k_max
        self.seconds: dict[int, float] = {}
        self.last_run: dict[int, int] = {}  # k -> the step it last ran at
        self.steps = 0

    def expected_tokens(self, k: int) -> float:
        total, survive = 1.0, 1.0
        for j in range(k):
            survive *= self.accepted[j] / self.reached[j]
            total += survive
        return total

    def choose(self) -> int:
        untimed = [k for k in range(1, self.k_max + 1) if k not in self.seconds]
        if untimed:  # drafting lengths first: the head's first tokens are its best
            return untimed[0]
        if 0 not in self.seconds:
            return 0
        best = max(self.seconds, key=lambda k: self.expected_tokens(k) / self.seconds[k])
        if self.steps % self.explore_every == 0:
            neighbours = [k for k in (best - 1, best + 1) if 0 <= k <= self.k_max]
            return min(neighbours, key=self.last_run.get)
        return best

    def update(self, k: int, accepted: int, seconds: float) -> None:
        self.steps += 1
        self.last_run[k] = self.steps
        for j in range(k):
            self.accepted[j] *= self.decay
            self.reached[j] *= self.decay
        for j in range(min(accepted + 1, k)):  # position j was reached when all before it were accepted
            self.reached[j] += 1
            self.accepted[j] += j < accepted
        previous = self.seconds.get(k)
        self.seconds[k] = seconds if previous is None else 0.8 * previous + 0.2 * seconds
