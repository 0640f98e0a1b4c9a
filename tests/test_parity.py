"""Our forward against transformers' Qwen3_5[Moe]ForCausalLM from the same checkpoint, fp32.

Prefill (chunked delta rule, several chunks), then 1-token decode steps, then multi-token chunks on
the warm cache (recurrent and chunked paths with a carried state) — every logit within 1e-4 — and
greedy generation token-identical to transformers' `generate`.
"""

import pytest
import torch

from daemon.weights.loader import load_model
from tests.helpers import assert_chunked_parity, chat_prompt, decode, random_ids, reference_model

MODELS = ["qwen3.6-dense-tiny", "qwen3.6-moe-tiny"]


@pytest.mark.parametrize("name", MODELS)
@torch.inference_mode()
def test_logits_match_transformers_through_prefill_decode_and_chunks(tiny, name, report_parity):
    ours, ref = load_model(tiny[name], device="cpu"), reference_model(tiny[name])
    # prefill 150 (3 chunks of the chunked rule), 4 single steps, then chunks of 3, 5 and 20 tokens
    assert_chunked_parity(ours, ref, random_ids(200, seed=3), [150, 1, 1, 1, 1, 3, 5, 20, 1], name, report_parity)


@pytest.mark.parametrize("name", MODELS)
@torch.inference_mode()
def test_last_only_logits_equal_the_last_row(tiny, name):
    model = load_model(tiny[name], device="cpu")
    tokens = random_ids(12, seed=4)
    full, _ = model(tokens, model.new_cache(16), 0)
    last, _ = model(tokens, model.new_cache(16), 0, last_only=True)
    assert last.shape == (1, 1, model.config.vocab_size)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=0, atol=1e-5)


PROMPTS = ["Hello! Who are you?", "Write a Python function that adds two numbers.", "¿Qué tal? 你好"]


@pytest.mark.parametrize("name", MODELS)
@torch.inference_mode()
def test_greedy_generation_matches_transformers_generate(tiny, name):
    ours, ref = load_model(tiny[name], device="cpu"), reference_model(tiny[name])
    for text in PROMPTS:
        prompt = chat_prompt(tiny[name], text)
        expected = ref.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False,
                                eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        got = decode(ours, prompt, 40)
        assert got == expected, f"{name} diverged on {text!r}"
        assert len(got) == 40
