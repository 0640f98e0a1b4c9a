"""The adaptive draft length goes where the expected tokens per second are highest."""

import random

from daemon.engine.draft_policy import AdaptiveDraft, FixedDraft


def _drive(policy: AdaptiveDraft, acceptance: float, seconds, steps: int = 200) -> list[int]:
    """Steps whose drafts are each accepted with probability `acceptance` until the first rejection."""
    rng = random.Random(0)
    chosen = []
    for _ in range(steps):
        k = policy.choose()
        chosen.append(k)
        accepted = 0
        while accepted < k and rng.random() < acceptance:
            accepted += 1
        policy.update(k, accepted, seconds(k))
    return chosen


def test_expected_tokens_follow_the_acceptance_estimates():
    policy = AdaptiveDraft(3, prior=0.5)
    assert policy.expected_tokens(0) == 1
    assert policy.expected_tokens(3) == 1 + 0.5 + 0.25 + 0.125  # sums of powers of two: exact in binary
    policy.update(3, 3, 1.0)
    assert policy.expected_tokens(3) > 1.875


def test_high_acceptance_and_cheap_drafts_choose_long_drafts():
    chosen = _drive(AdaptiveDraft(4), acceptance=0.95, seconds=lambda k: 1 + 0.05 * k)
    assert max(set(chosen[-50:]), key=chosen[-50:].count) == 4


def test_middling_acceptance_chooses_a_short_draft():
    # E(1) / s(1) = 1.5 / 1.3 beats plain (1 / 1) and k = 2 (1.75 / 1.6)
    # (a stretch of unlucky drafts can park it on plain steps until exploration corrects the estimate)
    chosen = _drive(AdaptiveDraft(4), acceptance=0.5, seconds=lambda k: 1 + 0.3 * k, steps=400)
    late = chosen[-100:]
    assert max(set(late), key=late.count) == 1
    assert late.count(4) <= len(late) // 16 + 1  # only the periodic exploration


def test_drafts_that_do_not_pay_fall_back_to_plain_steps_and_keep_exploring():
    # acceptance 0.2: E(1) / s(1) = 1.2 / 1.3 < 1, so plain steps (k = 0) are fastest
    chosen = _drive(AdaptiveDraft(3), acceptance=0.2, seconds=lambda k: 1 + 0.3 * k, steps=320)
    late = chosen[-160:]
    assert late.count(0) >= len(late) * 3 // 4
    assert 1 in late  # the neighbour of the best is re-tried now and then: its estimate stays fresh
    assert not {2, 3} & set(late)  # and not the long drafts, which would only cost


def test_exploration_climbs_to_longer_drafts_when_acceptance_rises():
    # prose-like acceptance first (plain steps win), then code-like acceptance at the same step costs:
    # k climbs one step at a time
    policy = AdaptiveDraft(4)
    assert set(_drive(policy, acceptance=0.02, seconds=lambda k: 1 + 0.1 * k, steps=200)[-100:]) == {0, 1}
    chosen = _drive(policy, acceptance=0.95, seconds=lambda k: 1 + 0.1 * k, steps=400)
    late = chosen[-50:]
    assert max(set(late), key=late.count) == 4


def test_plain_is_timed_after_every_drafting_length():
    policy = AdaptiveDraft(2)
    order = []
    for _ in range(3):
        order.append(policy.choose())
        policy.update(order[-1], 0, 1.0)
    assert order == [1, 2, 0]


def test_fixed_policy_always_drafts_k():
    policy = FixedDraft(3)
    policy.update(3, 0, 1.0)
    assert policy.choose() == 3
