"""Plain transformer trunks (Llama, Qwen3) through our forward, against transformers, in float64 and fp32.

The same bars as the Qwen3.5/3.6 parity tests (tests.helpers.scaled_tolerance): prefill, 1-token
decode steps and multi-token chunks on a warm cache all within them of transformers' logits, and
greedy generation token-identical to transformers' `generate`, checked in float64 (both models) as
tests/test_parity.py does: in float32 a near-tie may flip the argmax on another CPU. Llama's checkpoint
ties its embeddings (as SmolLM2's does); Qwen3's does not.
"""

import pytest
import torch

from daemon.tiny.text_checkpoints import VARIANTS
from daemon.weights.loader import load_model
from tests.helpers import DTYPES, assert_chunked_parity, chat_prompt, decode, random_ids, reference_model


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(VARIANTS))
@torch.inference_mode()
def test_logits_match_transformers(tiny_text, name, dtype, report_parity):
    ours = load_model(tiny_text[name], device="cpu", dtype=dtype)
    ref = reference_model(tiny_text[name], dtype)
    assert (ours.lm_head.weight is ours.embed_tokens.weight) == VARIANTS[name]["tie_word_embeddings"]
    assert_chunked_parity(ours, ref, random_ids(60, seed=5), [40, 1, 1, 3, 5], name, report_parity,
                          cache_field="past_key_values")


@pytest.mark.parametrize("name", sorted(VARIANTS))
@torch.inference_mode()
def test_greedy_generation_matches_transformers_generate(tiny_text, name):
    dtype = torch.float64  # exact enough that no near-tie can flip a token (module docstring)
    ours = load_model(tiny_text[name], device="cpu", dtype=dtype)
    ref = reference_model(tiny_text[name], dtype)
    prompt = chat_prompt(tiny_text[name], "Write a Python function that adds two numbers.")
    expected = ref.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, len(prompt):].tolist()
    assert decode(ours, prompt, 30) == expected
