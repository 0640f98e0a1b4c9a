"""daemon.engine.sampling: the target distribution q and lossless speculative verification.

Proven here, on synthetic distributions over a vocabulary of 6 tokens:
- verify_drafts is lossless: the first emitted token is distributed as q[0] (k=1 and k=3, sampled or
  greedy drafts); for k=3 the second emitted token is distributed as q[1]; the total-variation
  distance to q is small and a chi-square test accepts q, while deliberately wrong samplers (always accepting the
  draft; resampling from q instead of norm(max(0, q - p))) land far from q;
- with p == q every draft is accepted and the bonus token follows q[1];
- against a greedy target exactly the leading drafts equal to the argmax are accepted, and the next
  token is the argmax of the following row;
- target_probs: temperature, min-p, top-k, top-p (hand-computed examples), normalisation, greedy one-hot;
- penalties: per verified position, exactly (float64) what a loop over the rows computes, each row's
  history holding the drafts before it; and with them MTP stays lossless: the first two tokens of a
  speculative decode (k=2, drafts from an unpenalised p) are jointly distributed as plain decoding's,
  while penalising every row with the history alone lands far from it;
- every sampling field at either end of the range the protocol accepts (alone, and all at once), through
  the penalties, target_probs, choose and verify_drafts, gives finite distributions and a valid token;
- `sample` follows each row and never draws a token of probability 0; top-p found among the most
  likely tokens equals a full sort of the vocabulary exactly;
- seeded generators reproduce draws exactly; SamplingParams rejects invalid settings.
"""

from __future__ import annotations

import math

import pytest
import torch

from daemon.engine.penalties import Penalties
from daemon.engine.sampling import NUCLEUS_CANDIDATES, SamplingParams, choose, sample, target_probs, verify_drafts
from mtpchat.protocol import SAMPLING_BOUNDS, sampling_fields

V = 6
Q0 = torch.tensor([0.40, 0.30, 0.10, 0.10, 0.05, 0.05])
P0 = torch.tensor([0.05, 0.05, 0.10, 0.10, 0.30, 0.40])  # far from Q0: TV(P0, Q0) = 0.6


# chi-square with 5 degrees of freedom (6 tokens) exceeds this with probability 0.001 when the tokens
# follow the distribution: a fixed seed makes each check deterministic, and a correct sampler fails it
# for 1 seed in 1000, while a wrong one (TV 0.18 at 12,000 draws) lands in the hundreds
CHI2_5DOF_P001 = 20.52


def chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=len(probs)).double()
    expected = probs.double() * tokens.numel()
    return float(((counts - expected) ** 2 / expected).sum())


def tv(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    emp = torch.bincount(tokens, minlength=V).double() / tokens.numel()
    return 0.5 * float((emp - probs.double()).abs().sum())


def run(target, draft_probs, drafts, seed=0):
    """verify_drafts per trial (drafts [N, k]); returns accepted counts [N] and emitted tokens [N, k+1]."""
    g = torch.Generator().manual_seed(seed)
    acc, emitted = [], []
    for d in drafts:
        a, tok = verify_drafts(d, draft_probs, target, g)
        acc.append(a), emitted.append(d.tolist()[:a] + [tok] + [-1] * (d.numel() - a))
    return torch.tensor(acc), torch.tensor(emitted)


def draw(probs: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    return torch.multinomial(probs, n, replacement=True, generator=torch.Generator().manual_seed(seed)).T


def test_lossless_single_draft_and_wrong_samplers_are_caught():
    n = 12_000
    target = torch.stack([Q0, Q0.flip(0)])
    drafts = draw(P0[None], n, seed=1)
    acc, emitted = run(target, P0[None], drafts)
    first = emitted[:, 0]
    assert tv(first, Q0) < 0.02
    assert chi_square(first, Q0) < CHI2_5DOF_P001
    assert abs(acc.double().mean() - torch.minimum(P0, Q0).sum()) < 0.02  # acceptance rate = sum min(p, q)
    # wrong sampler 1: always accept the draft
    assert tv(drafts[:, 0], Q0) > 0.5
    # wrong sampler 2: same accept test, but resample from q (not max(0, q - p)) on rejection
    g = torch.Generator().manual_seed(2)
    d = drafts[:, 0]
    accept = torch.rand(n, generator=g) * P0[d] < Q0[d]
    wrong = torch.where(accept, d, draw(Q0[None], n, seed=3)[:, 0])
    assert tv(wrong, Q0) > 0.1  # analytically 0.18


def test_lossless_three_drafts_first_and_second_token():
    n = 8_000
    gen = torch.Generator().manual_seed(4)
    target = torch.cat([Q0[None], torch.softmax(torch.randn(3, V, generator=gen) * 1.5, -1)])
    draft_probs = torch.cat([P0[None], torch.softmax(torch.randn(2, V, generator=gen) * 1.5, -1)])
    drafts = draw(draft_probs, n, seed=5)
    acc, emitted = run(target, draft_probs, drafts, seed=6)
    assert set(acc.tolist()) == {0, 1, 2, 3}
    assert tv(emitted[:, 0], Q0) < 0.02
    # the second emitted token exists when at least one draft was accepted; it must follow q[1]
    assert tv(emitted[acc >= 1, 1], target[1]) < 0.03
    assert tv(drafts[:, 0], Q0) > 0.5


def test_draft_equal_to_target_always_accepted_and_bonus_follows_next_row():
    n = 6_000
    q1 = torch.tensor([0.05, 0.15, 0.2, 0.25, 0.3, 0.05])
    target = torch.stack([Q0, q1])
    acc, emitted = run(target, Q0[None], draw(Q0[None], n, seed=7), seed=8)
    assert bool((acc == 1).all())
    assert tv(emitted[:, 0], Q0) < 0.025
    assert tv(emitted[:, 1], q1) < 0.025


def test_greedy_draft_against_sampled_target_is_lossless():
    n = 10_000
    target = torch.stack([Q0, Q0.flip(0)])
    drafts = torch.full((n, 1), 1)  # point-mass draft on token 1 (q = 0.3)
    acc, emitted = run(target, None, drafts, seed=9)
    assert tv(emitted[:, 0], Q0) < 0.02
    assert abs(acc.double().mean() - Q0[1]) < 0.02
    assert bool((emitted[acc == 0, 0] != 1).all())  # a rejected token is never re-emitted


@pytest.mark.parametrize("sampled_draft", [False, True])
def test_greedy_target_accepts_exactly_the_argmax_prefix(sampled_draft):
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(4, V, generator=gen)
    target = target_probs(logits, SamplingParams(temperature=0.0))
    best = logits.argmax(-1)
    draft_probs = torch.softmax(torch.randn(3, V, generator=gen), -1) if sampled_draft else None
    for m in range(4):
        drafts = best[:3].clone()
        if m < 3:
            drafts[m] = (best[m] + 1) % V
        for seed in range(5):
            got = verify_drafts(drafts, draft_probs, target, torch.Generator().manual_seed(seed))
            assert got == (m, int(best[m]))


TINY = [{"temperature": 1e-40}, {"temperature": 1e-50}, {"temperature": 5e-324}, {"temperature": 1.0, "top_p": 1e-300},
        {"temperature": 1.0, "top_p": 1e-46}]  # each accepted by the protocol, each once NaN in float32


@pytest.mark.parametrize("kwargs", TINY)
def test_tiny_temperature_or_top_p_gives_the_top_token_not_nan(kwargs):
    logits = torch.randn(8, 1000, generator=torch.Generator().manual_seed(12)) * 10
    params = SamplingParams(**kwargs)
    probs = target_probs(logits, params)
    assert not probs.isnan().any()
    assert torch.equal(probs.argmax(-1), logits.argmax(-1)) and bool((probs.amax(-1) == 1).all())
    tokens, _ = choose(logits, params, torch.Generator().manual_seed(13))
    assert torch.equal(tokens, logits.argmax(-1))


def test_target_probs_temperature_topk_topp_greedy():
    logits = torch.randn(64, V, generator=torch.Generator().manual_seed(11)) * 2
    probs = target_probs(logits, SamplingParams(temperature=0.7))
    assert torch.equal(probs, torch.softmax(logits / 0.7, -1))  # the very same float32 ops: bit for bit
    top3 = target_probs(logits, SamplingParams(temperature=1.0, top_k=3))
    assert bool(((top3 > 0).sum(-1) == 3).all())
    kept = logits.topk(3, -1).indices
    # the same 3 exponentials, summed with the masked tokens' zeros in another order: a few ulps (float32
    # eps 1.2e-7) of probabilities <= 1
    assert torch.allclose(top3.gather(-1, kept), torch.softmax(logits.gather(-1, kept), -1), rtol=0, atol=1e-6)
    both = target_probs(logits, SamplingParams(temperature=1.3, top_k=4, top_p=0.6))
    for p in (probs, top3, both):
        # a float32 sum of 6 probabilities, each a few ulps from exact: within ~8 ulps (1e-6) of 1
        assert torch.allclose(p.sum(-1), torch.ones(64), rtol=0, atol=1e-6)
    assert bool(((both > 0).sum(-1) <= 4).all())
    base = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    expect = {0.7: [0.625, 0.375, 0, 0], 0.4: [1, 0, 0, 0], 0.81: [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0],
              1.0: [0.5, 0.3, 0.15, 0.05]}
    for top_p, want in expect.items():
        got = target_probs(base, SamplingParams(temperature=1.0, top_p=top_p))
        # hand-computed fractions vs float32 (log, softmax, renormalise): a few ulps of values <= 1
        assert torch.allclose(got, torch.tensor([want], dtype=torch.float32), rtol=0, atol=1e-6), top_p
    tie = target_probs(torch.zeros(1, 4), SamplingParams(temperature=1.0, top_p=0.5))  # exact 0.25 steps
    assert sorted(tie[0].tolist()) == [0, 0, 0.5, 0.5]  # 2 tokens already reach 0.5: no third one
    greedy = target_probs(logits.bfloat16(), SamplingParams(temperature=0.0, top_k=2, top_p=0.5))
    assert greedy.dtype == torch.float32
    assert torch.equal(greedy, torch.nn.functional.one_hot(logits.bfloat16().float().argmax(-1), V).float())


def test_seeded_generators_reproduce_and_different_seeds_differ():
    probs = torch.softmax(torch.randn(200, V, generator=torch.Generator().manual_seed(12)), -1)
    target = torch.stack([Q0, Q0.flip(0)])
    drafts = draw(P0[None], 200, seed=13)

    def draws(seed):
        g = torch.Generator().manual_seed(seed)
        return sample(probs, g).tolist(), [verify_drafts(d, P0[None], target, g) for d in drafts]

    assert draws(1) == draws(1)
    a, b = draws(1), draws(2)
    assert a[0] != b[0] and a[1] != b[1]


def test_sample_follows_the_rows_and_never_draws_a_zero_probability_token():
    """Inverse transform sampling: each row's draws follow that row (unnormalised rows too), and tokens of
    probability 0 — first, inside and last, where an off-by-one in the search would land — never come."""
    sparse = torch.tensor([0.0, 0.4, 0.0, 0.35, 0.25, 0.0])
    rows = torch.stack([Q0 * 3.0, sparse])  # row 0 sums to 3
    g = torch.Generator().manual_seed(21)
    tokens = torch.stack([sample(rows, g) for _ in range(12_000)])
    assert chi_square(tokens[:, 0], Q0) < CHI2_5DOF_P001
    assert set(tokens[:, 1].tolist()) == {1, 3, 4}
    assert tv(tokens[:, 1], sparse) < 0.02
    one_hot = torch.zeros(3, 1000)
    one_hot[0, 0], one_hot[1, 517], one_hot[2, 999] = 1e-30, 2.0, 0.5
    assert sample(one_hot, g).tolist() == [0, 517, 999]
    for broken in (torch.tensor([[0.5, float("nan"), 0.5]]), torch.zeros(1, 3), torch.tensor([[1.0, float("inf")]])):
        with pytest.raises(ValueError, match="no finite positive mass"):  # not an id past the vocabulary
            sample(broken, g)


def _nucleus_by_full_sort(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The definition: sort the whole vocabulary, keep the prefix whose mass before each token is below top_p."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
    outside[..., 0] = False
    kept = torch.zeros_like(probs).scatter_(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return kept / kept.sum(-1, keepdim=True)


@pytest.mark.parametrize("scale", [8.0, 1.0, 0.05])  # peaked (prefix among the candidates), mixed, flat
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_top_p_from_the_candidates_equals_a_full_sort(scale, top_p):
    """The top-p prefix found among the most likely tokens is the full sort's, exactly, in either branch
    (float32 cumulative sums over the same values in the same order: no tolerance)."""
    logits = torch.randn(3, 5000, generator=torch.Generator().manual_seed(22)) * scale
    probs = logits.softmax(-1)
    params = SamplingParams(temperature=1.0, top_p=top_p)
    assert torch.equal(target_probs(logits, params), _nucleus_by_full_sort(probs, top_p))
    kept = int((target_probs(logits, params) > 0).sum(-1).max())
    if scale == 8.0:
        assert kept < NUCLEUS_CANDIDATES  # the candidates held the prefix: the shortcut was exercised
    if scale == 0.05:
        assert kept > NUCLEUS_CANDIDATES  # the full-sort branch was exercised


def test_min_p_keeps_tokens_at_least_min_p_times_the_top_one():
    base = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    # 0.5 * 0.3 = 0.15 sits on the boundary in exact arithmetic; float32 logs may land either side, so 0.29
    expect = {0.29: [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], 0.5: [0.625, 0.375, 0, 0], 1.0: [1, 0, 0, 0],
              0.05: [0.5, 0.3, 0.15, 0.05]}
    for min_p, want in expect.items():
        got = target_probs(base, SamplingParams(temperature=1.0, min_p=min_p))
        # hand-computed fractions vs float32 (log, mask, softmax): a few ulps of values <= 1
        assert torch.allclose(got, torch.tensor([want], dtype=torch.float32), rtol=0, atol=1e-6), min_p
    # applied after temperature, as vLLM does: a hotter q keeps more tokens at the same min_p
    hot = target_probs(base, SamplingParams(temperature=4.0, min_p=0.5))
    assert (hot > 0).sum() == 4


PROMPT = [3, 7, 7, 11]


def loop_penalised(logits, prompt, history, following, params):
    """The penalties row by row, token by token: row i after history + following[:len(following) - N + 1 + i]."""
    rows = []
    for i, row in enumerate(logits.clone()):
        reply = history + following[:len(following) - len(logits) + 1 + i]
        for token in set(prompt) | set(reply):
            x = row[token]
            row[token] = x / params.repetition_penalty if x > 0 else x * params.repetition_penalty
        for token in set(reply):
            row[token] = row[token] - params.frequency_penalty * reply.count(token)
            row[token] = row[token] - params.presence_penalty
        rows.append(row)
    return torch.stack(rows)


@pytest.mark.parametrize("params", [
    SamplingParams(repetition_penalty=1.3, presence_penalty=0.7, frequency_penalty=0.4),
    SamplingParams(repetition_penalty=0.8, presence_penalty=-1.0, frequency_penalty=-0.3),
    SamplingParams(frequency_penalty=2.0), SamplingParams(repetition_penalty=2.0)])
def test_penalties_per_verified_position_equal_a_loop_exactly(params):
    gen = torch.Generator().manual_seed(14)
    vocab = 40
    history, drafts = [5, 7, 5, 20], [20, 9, 5]
    penalties = Penalties(params, PROMPT, vocab, torch.device("cpu"))
    penalties.record(history[:1])
    penalties.record(history[1:])
    logits = torch.randn(len(drafts) + 1, vocab, generator=gen, dtype=torch.float64) * 3
    got = penalties.apply(logits, torch.tensor(drafts))
    # the same float64 operations on the same values in the same order: bit for bit
    assert torch.equal(got, loop_penalised(logits, PROMPT, history, drafts, params))
    assert not torch.equal(got[0], got[-1] - logits[-1] + logits[0])  # the rows' histories differ
    # a drafter's single row after two chained drafts, on a reduced draft vocabulary of 30 ids
    row = penalties.apply(logits[:1, :30], torch.tensor(drafts[:2]))
    assert torch.equal(row, loop_penalised(logits[:1], PROMPT, history, drafts[:2], params)[:, :30])
    # ids past a reduced draft vocabulary (in the history, and drafted) are left out of its columns
    penalties.record([33])
    row = penalties.apply(logits[:2, :30], torch.tensor([36]))
    assert torch.equal(row, loop_penalised(logits[:2], PROMPT, history + [33], [36], params)[:, :30])
    unpenalised = Penalties(SamplingParams(), PROMPT, vocab, torch.device("cpu"))
    unpenalised.record(history)
    assert unpenalised.apply(logits, torch.tensor(drafts)) is logits


def test_mtp_with_penalties_is_lossless_per_position():
    """A looping model, blind to context but for the penalties: the same logits at every position. The
    joint law of its first two tokens is q0(a) * q1(b | history + a), q1 moved by `a` through the
    penalties. Drafts come from the unpenalised distribution, as an unpenalised drafter's would."""
    raw = (torch.randn(1, V, generator=torch.Generator().manual_seed(15)) * 2).expand(4, V)
    params = SamplingParams(temperature=1.0, min_p=0.02, repetition_penalty=1.5, presence_penalty=2.0,
                            frequency_penalty=0.5)
    unpenalised = target_probs(raw[:2], SamplingParams(temperature=1.0))

    def history(*tokens):
        penalties = Penalties(params, [0], V, torch.device("cpu"))
        penalties.record(list(tokens))
        return penalties

    q0 = target_probs(history().apply(raw[:1]), params)[0]
    joint = torch.stack([q0[a] * target_probs(history(a).apply(raw[1:2]), params)[0] for a in range(V)])

    def first_two(trials, seed, per_position=True):
        g = torch.Generator().manual_seed(seed)
        pairs = []
        for _ in range(trials):
            penalties, emitted = history(), []
            while len(emitted) < 2:
                drafts = torch.multinomial(unpenalised, 1, generator=g)[:, 0]
                rows = raw[:3]
                logits = (penalties.apply(rows, drafts) if per_position else
                          torch.cat([penalties.apply(row[None]) for row in rows]))
                accepted, token = verify_drafts(drafts, unpenalised, target_probs(logits, params), g)
                step = drafts[:accepted].tolist() + [token]
                penalties.record(step)
                emitted += step
            pairs.append(emitted[0] * V + emitted[1])
        emp = torch.bincount(torch.tensor(pairs), minlength=V * V).double() / trials
        return 0.5 * float((emp - joint.flatten().double()).abs().sum())

    # 36 cells: the expected TV of n draws is at most 0.5 * sqrt(2 / (pi n)) * sqrt(36) = 0.024 at n = 10000
    assert first_two(10_000, seed=16) < 0.04
    assert first_two(2_000, seed=17, per_position=False) > 0.2  # history-only penalties: measured 0.3


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(top_k=-1), dict(top_p=0.0),
                                    dict(top_p=-0.5), dict(top_p=1.01), dict(min_p=-0.1), dict(min_p=1.5),
                                    dict(repetition_penalty=0.0), dict(repetition_penalty=float("inf")),
                                    dict(presence_penalty=float("nan")), dict(frequency_penalty=float("inf"))])
def test_sampling_params_rejects_invalid(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)
    SamplingParams(temperature=0.5, top_k=5, top_p=1.0)  # valid values pass


def protocol_ends(field: str) -> tuple:
    """The lowest and highest value the protocol accepts for a sampling field (no upper limit: the largest
    msgpack integer)."""
    bounds = SAMPLING_BOUNDS[field]
    low = math.nextafter(bounds.low, math.inf) if bounds.low_open else bounds.low
    return low, 2**64 - 1 if bounds.high is None else bounds.high


EXTREMES = [
    *[{field: value} for field in SAMPLING_BOUNDS for value in protocol_ends(field)],
    {field: protocol_ends(field)[0] for field in SAMPLING_BOUNDS},
    {field: protocol_ends(field)[1] for field in SAMPLING_BOUNDS},
]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("settings", EXTREMES, ids=lambda settings: ",".join(f"{k}={v:g}" for k, v in settings.items()))
def test_every_accepted_sampling_extreme_gives_finite_probabilities_and_a_token(settings, temperature):
    """Each field at each end of its wire range, checked by the protocol as a request would be, then through
    everything the engine does with it: penalties over a prompt and a reply (three verified rows, two
    drafts), the target distribution, a draw, and verification. A repetition penalty of 1e-40 once passed
    the protocol and turned logits into inf and the draw into a multinomial error."""
    sampling = sampling_fields({"temperature": temperature, **settings})  # the protocol accepts every one
    params = SamplingParams(**sampling, seed=0)
    vocab, gen = 50, torch.Generator().manual_seed(21)
    logits = torch.randn(3, vocab, generator=gen) * 10
    logits[:, :4] = torch.tensor([60.0, -60.0, 59.5, -1e-3])  # model-sized extremes, both signs, a near-tie
    prompt, history, drafts = [0, 1, 2, 3, 9], [0, 2, 2, 9, 9, 9], torch.tensor([0, 2])
    penalties = Penalties(params, prompt, vocab, torch.device("cpu"))
    penalties.record(history)
    penalised = penalties.apply(logits, drafts)
    assert bool(penalised.isfinite().all()), params
    probs = target_probs(penalised, params)
    assert bool(probs.isfinite().all()) and bool((probs >= 0).all())
    # the rows sum to 1 up to float32 rounding over 50 terms (each off by at most ~6e-8)
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)
    tokens, q = choose(penalised, params, torch.Generator().manual_seed(22))
    assert bool(((tokens >= 0) & (tokens < vocab)).all())
    assert bool((probs[torch.arange(3), tokens] > 0).all())  # never a token the settings ruled out
    if q is not None:
        accepted, token = verify_drafts(drafts, None, q, torch.Generator().manual_seed(23))
        assert 0 <= accepted <= 2 and 0 <= token < vocab and float(q[accepted, token]) > 0
