"""Choosing the draft length k for each speculative step.

`FixedDraft` always drafts k. `AdaptiveDraft` picks, each step, the k ≤ k_max with the highest expected
tokens per second: expected tokens E(k) = 1 + Σ_{j≤k} Π_{i≤j} c_i from the running conditional
acceptance c_i of draft position i, over the measured seconds a step of k costs (draft steps plus the
(k+1)-token verify, timed on the steps actually run). Counts decay so the policy follows the content
(code drafts better than prose); every k is timed once at the start and `k_max` is re-tried every
`explore_every` steps, so positions beyond the current k keep fresh estimates.
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
        self.steps = 0

    def expected_tokens(self, k: int) -> float:
        total, survive = 1.0, 1.0
        for j in range(k):
            survive *= self.accepted[j] / self.reached[j]
            total += survive
        return total

    def choose(self) -> int:
        untimed = [k for k in range(1, self.k_max + 1) if k not in self.seconds]
        if untimed:
            return untimed[0]
        if self.steps % self.explore_every == 0:
            return self.k_max
        return max(self.seconds, key=lambda k: self.expected_tokens(k) / self.seconds[k])

    def update(self, k: int, accepted: int, seconds: float) -> None:
        self.steps += 1
        for j in range(k):
            self.accepted[j] *= self.decay
            self.reached[j] *= self.decay
        for j in range(min(accepted + 1, k)):  # position j was reached when all before it were accepted
            self.reached[j] += 1
            self.accepted[j] += j < accepted
        previous = self.seconds.get(k)
        self.seconds[k] = seconds if previous is None else 0.8 * previous + 0.2 * seconds
