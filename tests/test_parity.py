"""Our forward against transformers' Qwen3_5[Moe]ForCausalLM from the same checkpoint, in float64 and fp32.

Prefill (chunked delta rule, several chunks), then 1-token decode steps, then multi-token chunks on
the warm cache (recurrent and chunked paths with a carried state) — every logit within the scaled
bar of tests.helpers (float64: 1e-9 of the logits' scale, where the two agree to ~1e-15 on any CPU;
float32: 2e-4 of it, wide enough for any CPU's summation order) — and greedy generation
token-identical to transformers' `generate`. Token identity is checked in float64 (both models): float32
logits of two correct forwards differ by up to ~1e-5 of their scale, and where the top two logits are
closer than that another CPU's summation order may flip the argmax; in float64 they agree to ~1e-15, so
only a real difference changes a token.
"""

import pytest
import torch

from daemon.weights.loader import load_model
from tests.helpers import (
    DTYPES,
    assert_chunked_parity,
    assert_scaled_close,
    chat_prompt,
    decode,
    random_ids,
    reference_model,
)

MODELS = ["qwen3.6-dense-tiny", "qwen3.6-moe-tiny"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", MODELS)
@torch.inference_mode()
def test_logits_match_transformers_through_prefill_decode_and_chunks(tiny, name, dtype, report_parity):
    ours, ref = load_model(tiny[name], device="cpu", dtype=dtype), reference_model(tiny[name], dtype)
    # prefill 150 (3 chunks of the chunked rule), 4 single steps, then chunks of 3, 5 and 20 tokens
    assert_chunked_parity(ours, ref, random_ids(200, seed=3), [150, 1, 1, 1, 1, 3, 5, 20, 1], name, report_parity)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", MODELS)
@torch.inference_mode()
def test_last_only_logits_equal_the_last_row(tiny, name, dtype):
    model = load_model(tiny[name], device="cpu", dtype=dtype)
    tokens = random_ids(12, seed=4)
    full, full_hidden = model(tokens, model.new_cache(16), 0)
    last, last_hidden = model(tokens, model.new_cache(16), 0, last_only=True)
    assert last.shape == (1, 1, model.config.vocab_size)
    assert torch.equal(last_hidden, full_hidden)  # the same trunk computation, bit for bit
    # lm_head over 1 row vs 12 rows takes another matmul kernel (another summation order): scaled bar
    assert_scaled_close(last[:, 0], full[:, -1], "last_only")


PROMPTS = ["Hello! Who are you?", "Write a Python function that adds two numbers.", "¿Qué tal? 你好"]


@pytest.mark.parametrize("name", MODELS)
@torch.inference_mode()
def test_greedy_generation_matches_transformers_generate(tiny, name):
    dtype = torch.float64  # exact enough that no near-tie can flip a token (module docstring)
    ours, ref = load_model(tiny[name], device="cpu", dtype=dtype), reference_model(tiny[name], dtype)
    for text in PROMPTS:
        prompt = chat_prompt(tiny[name], text)
        expected = ref.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False,
                                eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        got = decode(ours, prompt, 40)
        assert got == expected, f"{name} diverged on {text!r}"
        assert len(got) == 40
