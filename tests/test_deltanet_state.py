"""Gated DeltaNet state: the two forms of the delta rule agree, and the per-token states a
multi-token forward records are exactly the states of feeding the tokens one at a time — which is
what lets speculative decoding roll back a rejected draft without replaying it. Each runs in float64
and float32 against the scaled bar of tests.helpers (the same maths in another summation order)."""

import pytest
import torch

from daemon.model.cache import DeltaNetCache
from daemon.model.delta_rule import chunked_delta_rule, recurrent_delta_rule
from daemon.weights.loader import load_model
from tests.helpers import DTYPES, assert_scaled_close, random_ids, scaled_tolerance


def _random_rule_inputs(length: int, seed: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(seed)
    b, h, dk, dv = 1, 3, 8, 6
    q = torch.nn.functional.normalize(torch.randn(b, h, length, dk, generator=gen), dim=-1) * dk**-0.5
    k = torch.nn.functional.normalize(torch.randn(b, h, length, dk, generator=gen), dim=-1)
    v = torch.randn(b, h, length, dv, generator=gen)
    g = -torch.rand(b, h, length, generator=gen) * 2
    beta = torch.rand(b, h, length, generator=gen)
    state = torch.randn(b, h, dk, dv, generator=gen)
    return tuple(x.to(dtype) for x in (q, k, v, g, beta, state))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length", [1, 7, 63, 64, 65, 200])
def test_chunked_and_recurrent_delta_rule_agree(length, dtype):
    q, k, v, g, beta, state = _random_rule_inputs(length, seed=length, dtype=dtype)
    s_rec, s_chunk = state.clone(), state.clone()
    out_rec = recurrent_delta_rule(q, k, v, g, beta, s_rec)
    out_chunk = chunked_delta_rule(q, k, v, g, beta, s_chunk)
    assert_scaled_close(out_chunk, out_rec, "outputs")
    assert_scaled_close(s_chunk, s_rec, "final state")
    assert not torch.equal(s_rec, state)


def _deltanet_layers(cache):
    return [layer for layer in cache.layers if isinstance(layer, DeltaNetCache)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["qwen3.6-dense-tiny", "qwen3.6-moe-tiny"])
@torch.inference_mode()
def test_recorded_states_equal_one_token_at_a_time(tiny, name, dtype):
    model = load_model(tiny[name], device="cpu", dtype=dtype)
    prompt, draft = random_ids(30, seed=5), random_ids(5, seed=6)

    multi = model.new_cache(64, max_steps=5)
    model(prompt, multi, 0)
    model(draft, multi, 30, keep_steps=True)

    single = model.new_cache(64)
    model(prompt, single, 0)
    layers = _deltanet_layers(multi)
    assert layers, "the tiny model has DeltaNet layers"
    for t in range(5):
        model(draft[:, t:t + 1], single, 30 + t)
        for recorded, stepped in zip(layers, _deltanet_layers(single)):
            # equal up to rounding (scaled bar): earlier layers' matmuls run over 5 rows vs 1 row; a
            # state one token off differs by orders of magnitude more (see the restore test)
            assert_scaled_close(recorded.state_steps[t], stepped.state, f"state after draft token {t}")
            assert_scaled_close(recorded.conv_steps[t], stepped.conv, f"conv window after draft token {t}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accepted", [0, 2, 4])
@torch.inference_mode()
def test_restore_step_continues_as_if_only_the_accepted_tokens_were_seen(tiny, accepted, dtype):
    model = load_model(tiny["qwen3.6-dense-tiny"], device="cpu", dtype=dtype)
    prompt, draft, after = random_ids(20, seed=7), random_ids(5, seed=8), random_ids(3, seed=9)

    spec = model.new_cache(64, max_steps=5)
    model(prompt, spec, 0)
    model(draft, spec, 20, keep_steps=True)
    spec.restore_step(accepted)
    kept = 20 + accepted + 1
    rolled_back, _ = model(after, spec, kept)

    plain = model.new_cache(64)
    model(prompt, plain, 0)
    model(draft[:, :accepted + 1], plain, 20)
    expected, _ = model(after, plain, kept)
    assert_scaled_close(rolled_back, expected, "after restore_step")
    # and the rollback matters: continuing from another token's state moves the logits far beyond the bar
    spec.restore_step(4 if accepted != 4 else 0)
    assert (model(after, spec, kept)[0] - expected).abs().max() > 10 * scaled_tolerance(expected)


def test_keep_steps_needs_enough_slots(tiny):
    model = load_model(tiny["qwen3.6-dense-tiny"], device="cpu")
    cache = model.new_cache(16, max_steps=2)
    with pytest.raises(ValueError, match="3 tokens need 3 state slots; the cache has 2"):
        model(random_ids(3, seed=1), cache, 0, keep_steps=True)
