"""Compiled decoding steps (daemon/engine/step_functions.py): `warm_up` compiles every graph a reply
can reach, so no reply compiles one (a stall of a minute on this machine), and decoding with the
compiled steps gives the eager decoder's tokens, plain and MTP, greedy and sampled. The daemon
compiles a `compile = true` model in the background and serves it eagerly meanwhile, or for good if
compiling fails.

The graph-set tests trace with torch.compile's "eager" backend: which graphs exist and what their
guards accept is decided by tracing, before any backend runs, and tracing a tiny model takes seconds
where generating its code takes minutes. One test generates real code (inductor) in float64, where
compiled and eager logits agree to helpers' FLOAT64_RTOL: fusion only reorders sums (~1e-15
relative), while a wrong position, mask or cache slot moves logits by 1e-3 or more.
"""

import pytest
import torch
from torch._dynamo.utils import counters

from daemon.engine.generate import Generation
from daemon.engine.options import GenerationOptions
from daemon.engine.sampling import SamplingParams
from daemon.engine.step_functions import StepFunctions, compile_steps, step_functions
from daemon.serve import registry as registry_module
from daemon.serve.registry import ModelRegistry
from daemon.weights.loader import load_model
from mtpchat.config import Config, ModelSettings, Quantization
from mtpchat.protocol import MAX_DRAFT
from tests.helpers import assert_scaled_close, chat_prompt, random_ids, wait_until

MODELS = ["qwen3.6-dense-tiny", "qwen3.6-moe-tiny"]
SAMPLED = SamplingParams(temperature=0.8, top_p=0.95, top_k=20, seed=5)


def _tokens(model, prompt, draft_k, *, adaptive=False, sampling=SamplingParams(), max_tokens=40):
    options = GenerationOptions(max_tokens=max_tokens, draft_k=draft_k, adaptive=adaptive, sampling=sampling)
    return Generation(model, prompt, options).tokens()


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


INT4 = Quantization("int4", 32, "int8")


@pytest.mark.parametrize("name, quantization, max_k", [
    (MODELS[0], Quantization(), MAX_DRAFT), (MODELS[1], Quantization(), MAX_DRAFT),
    (MODELS[0], INT4, 2), (MODELS[1], INT4, 2), (MODELS[0], Quantization("fp8"), 2)])
def test_no_reply_compiles_after_warm_up(tiny, name, quantization, max_k):
    """Every draft length up to MAX_DRAFT on the float models; also with quantized weights, up to 2 drafts
    (tracing a graph per verify width costs seconds each; the quantized layers trace alike at every width):
    int4 trunk (where the kernel takes the shape), int8 lm_head; fp8 on the dense model (its activations
    quantized inside the graph); and quantized MoE experts, whose traced form takes each (token, choice) on
    its own (QuantizedExperts.slots) where eager decoding loops over the experts hit: the tokens are the
    same."""
    model = load_model(tiny[name], device="cpu", dtype=torch.float32, quantization=quantization)  # its own
    prompts = [chat_prompt(tiny[name], "Hello! Who are you?"), random_ids(300, seed=4)[0].tolist()]
    # sampled runs draft a fixed k: the adaptive k follows step timings, and so would sampled tokens
    variants = [(0, False, SamplingParams()), (min(2, max_k), False, SamplingParams()),
                (max_k, True, SamplingParams()), (0, False, SAMPLED), (min(3, max_k), False, SAMPLED)]
    expected = [_tokens(model, prompt, k, adaptive=a, sampling=s) for prompt in prompts for k, a, s in variants]
    compile_steps(model, max_k, backend="eager")
    graphs = _graphs()
    assert graphs > 0
    # the long prompt's reply grows its caches past their first size: that must not compile either
    actual = [_tokens(model, prompt, k, adaptive=a, sampling=s) for prompt in prompts for k, a, s in variants]
    assert _graphs() == graphs, "a reply compiled a graph warm_up did not"
    assert actual == expected


def test_registry_compiles_in_the_background_and_serves_meanwhile(tiny, monkeypatch):
    monkeypatch.setattr(registry_module, "COMPILE_BACKEND", "eager")
    settings = ModelSettings("dense", str(tiny["qwen3.6-dense-tiny"]), compile=True)
    registry = ModelRegistry(Config(models={"dense": settings}, default="dense"))
    entry = registry.load("dense")
    wait_until(lambda: entry.state == "resident", 60)
    assert entry.describe()["compile"] in ("compiling", "on")
    wait_until(lambda: entry.compile != "compiling", 120)
    described = entry.describe()
    assert (described["compile"], described["compile_error"]) == ("on", "")
    assert described["compile_seconds"] > 0 and step_functions(entry.model).compiled
    registry.unload("dense")
    assert entry.describe()["compile"] == "off"


def test_a_failed_compile_leaves_the_model_serving_eagerly(tiny, monkeypatch):
    def no_compiler(self, max_k, vocab=None):
        raise RuntimeError("InductorError: no working C++ compiler found")

    monkeypatch.setattr(StepFunctions, "warm_up", no_compiler)
    settings = ModelSettings("dense", str(tiny["qwen3.6-dense-tiny"]), compile=True)
    registry = ModelRegistry(Config(models={"dense": settings}, default="dense"))
    entry = registry.load("dense")
    wait_until(lambda: entry.state == "resident" and entry.compile != "compiling", 60)
    assert entry.compile == "failed" and "no working C++ compiler" in entry.compile_error
    assert not step_functions(entry.model).compiled
    prompt = chat_prompt(tiny["qwen3.6-dense-tiny"], "Hello! Who are you?")
    assert len(_tokens(entry.model, prompt, 2)) == 40


def test_inductor_steps_equal_eager_steps(tiny):
    name = "qwen3.6-dense-tiny"
    model = load_model(tiny[name], device="cpu", dtype=torch.float64)
    eager = load_model(tiny[name], device="cpu", dtype=torch.float64)
    prompt = chat_prompt(tiny[name], "Hello! Who are you?")
    expected = {k: _tokens(eager, prompt, k) for k in (0, 1)}
    steps = compile_steps(model, 1)
    for k in (0, 1):
        assert _tokens(model, prompt, k) == expected[k], f"k={k}"
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        caches = [m.new_cache(64, max_steps=2, initial_len=len(prompt) + 1) for m in (model, eager)]
        for m, cache in zip((model, eager), caches, strict=True):
            m(ids, cache, 0)
        for start, rows in ((len(prompt), 1), (len(prompt) + 1, 2)):  # the second grows the caches
            step = ids[:, :rows] + 7
            actual, _ = steps.trunk(step, caches[0], start, keep_steps=rows > 1)
            reference, _ = eager(step, caches[1], start, keep_steps=rows > 1)
            assert_scaled_close(actual, reference, f"{rows} rows at {start}")
