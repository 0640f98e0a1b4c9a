"""Fixed-shape steps and the runner that replays them: the same tokens as the eager SpeculativeDecoder,
every step compiles into one graph (torch.compile fullgraph), and compiled steps equal eager ones.

Numbers are compared in float64 with helpers' FLOAT64_RTOL (1e-9 of the scale): a fixed-shape step
attends over the cache's whole capacity (masked) and a compiled one fuses and reorders sums, so only
summation order differs from the eager path — ~1e-15 relative in float64 — while a real error (a
wrong position, mask or DeltaNet slot) moves logits by 1e-3 or more. Token ids must be equal.
"""

import pytest
import torch

from daemon.engine.step_runner import CapturedDecoder, StepRunner
from daemon.weights.loader import load_model
from tests.helpers import assert_scaled_close, chat_prompt, decode, random_ids

MODELS = ["qwen3.6-dense-tiny", "qwen3.6-moe-tiny"]
CAPACITY = 256
TOKENS = 24


@pytest.fixture(scope="module")
def models(tiny):
    return {name: load_model(tiny[name], device="cpu", dtype=torch.float64) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_forward_at_equals_forward(models, name):
    model = models[name]
    ids = random_ids(12, seed=3)
    with torch.inference_mode():
        eager_cache, fixed_cache = model.new_cache(CAPACITY, initial_len=16), model.new_cache(CAPACITY)
        expected, _ = model(ids, eager_cache, 0)
        actual, _ = model.forward_at(ids, fixed_cache, torch.arange(12))
        assert_scaled_close(actual, expected, "prompt")
        expected, _ = model(ids[:, :3], eager_cache, 12, keep_steps=False)
        actual, _ = model.forward_at(ids[:, :3], fixed_cache, torch.arange(12, 15))
        assert_scaled_close(actual, expected, "3 more tokens")


@pytest.mark.parametrize("name", MODELS)
def test_runner_tokens_equal_speculative_decoder(tiny, models, name):
    model = models[name]
    prompts = [chat_prompt(tiny[name], "Hello! Who are you?"), random_ids(90, seed=21)[0].tolist()]
    for k in range(4):
        runner = StepRunner(model, CAPACITY, k)
        for prompt in prompts:
            expected = decode(model, prompt, TOKENS, draft_k=k)
            assert CapturedDecoder(runner, prompt).decode(TOKENS) == expected, f"k={k}"


def test_runner_refuses_caches_that_grow(models):
    model = models["qwen3.6-dense-tiny"]
    with pytest.raises(ValueError, match="full capacity"):
        model.forward_at(random_ids(2, seed=1), model.new_cache(CAPACITY, initial_len=8), torch.arange(2))


def _state(runner: StepRunner) -> list[torch.Tensor]:
    caches = [*runner.cache.layers, runner.mtp_cache]
    tensors = [t for cache in caches for t in vars(cache).values() if isinstance(t, torch.Tensor)]
    return [*vars(runner.buffers).values(), *tensors]


@pytest.mark.parametrize("name", MODELS)
def test_steps_compile_fullgraph_and_equal_eager(models, name):
    """fullgraph=True raises on any graph break, so building the runner proves each step is one graph;
    after every step all buffers and caches (tokens exactly, floats to FLOAT64_RTOL) equal the eager
    runner's. The decode step after a verify is what torch 2.13's inductor once got wrong."""
    torch._dynamo.reset()
    model, k = models[name], 2
    compiled, eager = StepRunner(model, 64, k, compile=True), StepRunner(model, 64, k)
    prompt = random_ids(10, seed=5)[0].tolist()
    for runner in (compiled, eager):
        runner.prefill(prompt)
    for name_ in ["draft", "verify", "decode", "decode", "draft", "verify"]:
        for runner in (compiled, eager):
            runner.run(name_)
        for actual, expected in zip(_state(compiled), _state(eager), strict=True):
            if expected.is_floating_point():
                assert_scaled_close(actual, expected, name_)
            else:
                assert torch.equal(actual, expected), name_


@pytest.mark.parametrize("tokens", [1, 2, 5])
def test_moe_gathers_experts_without_a_loop_equal_to_the_loop(models, tokens, monkeypatch):
    """Decode (1 token) and verify (k+1 <= 5) gather the chosen experts' weights: one batched matmul and
    no host sync; the per-expert loop (what long prefills take) is the reference. float64: only the
    order of the same sums differs (FLOAT64_RTOL)."""
    from daemon.model import mlp

    moe = models["qwen3.6-moe-tiny"].layers[0].mlp
    x = torch.randn(1, tokens, moe.gate.in_features, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(tokens))
    with torch.inference_mode():
        gathered = moe(x)
        monkeypatch.setattr(mlp, "GATHER_MAX_PAIRS", 0)
        assert_scaled_close(gathered, moe(x), f"{tokens} tokens")
