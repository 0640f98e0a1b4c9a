"""A prompt prefilled in chunks, and caches that grow as a reply does, decode exactly what one
whole-prompt prefill into a full-size cache does.

In float64, where the chunked DeltaNet form and the attention over a partly filled cache agree with
the one-pass computation to ~1e-12, far from any argmax tie: token identity is exact here on any CPU.
"""

from __future__ import annotations

import pytest
import torch

from daemon.engine import speculative
from daemon.engine.generate import PREFILLING
from daemon.model.cache import AttentionCache
from daemon.weights.loader import load_model
from tests.helpers import generation, random_ids

MODELS = ["qwen3.6-dense-tiny", "qwen3.6-moe-tiny"]


@pytest.fixture(scope="module")
def models(tiny):
    return {name: load_model(tiny[name], device="cpu", dtype=torch.float64) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("draft_k", [0, 2])
def test_chunked_prefill_decodes_what_one_pass_does(models, name, draft_k):
    model = models[name]
    prompt = random_ids(45, seed=3).flatten().tolist()
    whole = generation(model, prompt, 12, draft_k=draft_k).tokens()
    for chunk in (7, 16, 44):
        steps = list(generation(model, prompt, 12, draft_k=draft_k, prefill_chunk=chunk))
        parts = -(-len(prompt) // chunk)
        assert steps[:parts - 1] == [PREFILLING] * (parts - 1)  # a pause after every part but the last
        assert [s.token for s in steps[parts - 1:]] == whole, f"chunk {chunk}"


@pytest.mark.parametrize("draft_k", [0, 3])
def test_caches_that_grow_decode_what_full_size_caches_do(models, monkeypatch, draft_k):
    model = models["qwen3.6-moe-tiny"]
    prompt = random_ids(20, seed=5).flatten().tolist()
    monkeypatch.setattr(speculative, "FIRST_REPLY_TOKENS", 3)  # grows 23 -> 46 -> 92 within the reply
    run = generation(model, prompt, 70, draft_k=draft_k)
    grown = run.tokens()
    monkeypatch.setattr(speculative, "FIRST_REPLY_TOKENS", 10**6)
    assert generation(model, prompt, 70, draft_k=draft_k).tokens() == grown


def test_a_stream_asking_for_the_whole_context_holds_only_what_it_wrote(models, monkeypatch):
    model = models["qwen3.6-dense-tiny"]
    prompt = random_ids(10, seed=1).flatten().tolist()

    def state_bytes(max_tokens: int) -> int:
        run = generation(model, prompt, max_tokens, draft_k=2, context=4096)
        next(run)
        return run.stats.state_bytes

    huge = state_bytes(4000)
    assert huge == state_bytes(speculative.FIRST_REPLY_TOKENS)  # it starts at prompt + FIRST_REPLY_TOKENS
    monkeypatch.setattr(speculative, "FIRST_REPLY_TOKENS", 10**6)
    assert state_bytes(4000) > 5 * huge  # what preallocating the whole reply took


def test_an_attention_cache_doubles_keeps_its_contents_and_stops_at_max_len():
    cache = AttentionCache.allocate(1, 2, max_len=10, head_dim=3, device="cpu", dtype=torch.float64, initial_len=3)
    keys = torch.arange(18, dtype=torch.float64).view(1, 3, 2, 3)  # [B, T, heads, dim] at positions 0..2
    cache.write(torch.arange(3), keys, -keys)
    cache.reserve(4)
    assert cache.keys.shape[2] == 6  # twice the size, not one more
    assert (torch.equal(cache.window(3)[0], keys.transpose(1, 2))
            and torch.equal(cache.window(3)[1], -keys.transpose(1, 2)))
    cache.reserve(9)
    assert cache.keys.shape[2] == 10  # capped at max_len
    with pytest.raises(ValueError, match="past this cache's 10 positions"):
        cache.reserve(11)
