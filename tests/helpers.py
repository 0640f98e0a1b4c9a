"""Small helpers shared by tests: reference models from transformers, prompt ids, and a real
`mtpchatd` process on a real ipc socket in an isolated home."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import torch
from transformers import AutoTokenizer

# Parity bars, relative to the scale of the logits compared (max |logit| of the reference):
# - float64: both forwards run every op in float64 (unit roundoff 1.1e-16). What is left is the
#   different order of the same sums (our chunked delta rule and attention vs transformers'), each
#   adding ~depth·sqrt(n)·1e-16 relative error: measured up to 6e-15 of the scale with AVX2 and 8e-15
#   without SIMD (ATEN_CPU_CAPABILITY=default) on the tiny models. 1e-9 still catches any real error (a
#   wrong op, a float32 rounding on the way: ~1e-7) on any CPU.
FLOAT64_RTOL = 1e-9
# - float32: the same reordering at unit roundoff 6e-8, and CPUs differ in how they order sums (SIMD
#   width, FMA, oneDNN/AMX kernels), so the bar must hold for any order, not this machine's. Measured
#   (max abs diff / max |logit|) on the tiny Qwen models: up to 9.5e-6 with AVX2 and 1.1e-5 without
#   SIMD (AMD), and 1.61e-4 abs at scale ~10, i.e. ~1.6e-5, on an AVX-512/AMX Xeon. 2e-4 is 12x the
#   worst seen, and still below a real error (a DeltaNet state one token off moves logits by more than
#   10x this bar: asserted in test_deltanet_state).
FLOAT32_RTOL = 2e-4


# Both dtypes every parity check runs in: float64 (tight, exact maths) and float32 (what ships on the CPU).
DTYPES = [torch.float64, torch.float32]


def scaled_tolerance(expected: torch.Tensor) -> float:
    """The max abs difference allowed between two computations of `expected` (logits, states, outputs)
    by the same maths in a different order: the rtol of its dtype (see above) times its scale."""
    rtol = FLOAT64_RTOL if expected.dtype == torch.float64 else FLOAT32_RTOL
    return rtol * expected.abs().max().item()


def assert_scaled_close(actual: torch.Tensor, expected: torch.Tensor, label: str = "") -> float:
    """Assert max |actual - expected| <= scaled_tolerance(expected); return that max difference."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, label
    diff = (actual - expected).abs().max().item()
    bar = scaled_tolerance(expected)
    assert diff <= bar, f"{label}: max abs diff {diff:.2e} > {bar:.2e} ({expected.dtype})"
    return diff


# model_type -> (transformers module, causal LM class) of the reference for that checkpoint
_REFERENCE_CLASSES = {
    "qwen3_5": ("transformers.models.qwen3_5.modeling_qwen3_5", "Qwen3_5ForCausalLM"),
    "qwen3_5_moe": ("transformers.models.qwen3_5_moe.modeling_qwen3_5_moe", "Qwen3_5MoeForCausalLM"),
    "llama": ("transformers.models.llama.modeling_llama", "LlamaForCausalLM"),
    "qwen3": ("transformers.models.qwen3.modeling_qwen3", "Qwen3ForCausalLM"),
}


def float64_twin(module_name: str) -> types.ModuleType:
    """transformers' module `module_name` re-executed from its own source with every float32 upcast made
    a float64 one (`torch.float32`/`torch.float` -> `torch.float64`, `.float()` -> `.double()`).

    Loaded in float64, transformers still rounds to float32 in places: RMSNorm (`x.float()`), the
    gated norm and both delta rules (`.to(torch.float32)`), RoPE frequencies and angles, the MoE router's
    softmax. Such a model is a float32 model with float64 storage, and its logits sit ~1e-7 from a
    float64 forward. The twin is the same code with those casts pointing at float64: a true float64
    reference. Its RoPE init functions come from the twin of modeling_rope_utils (Llama 3's scaled RoPE).
    """
    twin_name = module_name + "_float64"
    if twin_name in sys.modules:
        return sys.modules[twin_name]
    original = importlib.import_module(module_name)
    source = inspect.getsource(original)
    source = source.replace("torch.float32", "torch.float64").replace(".float()", ".double()")
    source = re.sub(r"torch\.float\b", "torch.float64", source)
    twin = types.ModuleType(twin_name)
    twin.__package__, twin.__file__ = original.__package__, original.__file__
    sys.modules[twin_name] = twin  # transformers resolves its classes' type hints through sys.modules
    try:
        exec(compile(source, f"{original.__file__} (float64 twin)", "exec", dont_inherit=True), twin.__dict__)
    except BaseException:
        del sys.modules[twin_name]
        raise
    if module_name != "transformers.modeling_rope_utils" and "ROPE_INIT_FUNCTIONS" in twin.__dict__:
        twin.ROPE_INIT_FUNCTIONS = float64_twin("transformers.modeling_rope_utils").ROPE_INIT_FUNCTIONS
    return twin


def reference_module(model_type: str, dtype: torch.dtype) -> types.ModuleType:
    """transformers' modelling module for `model_type`: stock in float32, its float64 twin in float64."""
    module_name = _REFERENCE_CLASSES[model_type][0]
    return float64_twin(module_name) if dtype == torch.float64 else importlib.import_module(module_name)


def reference_model(checkpoint, dtype: torch.dtype = torch.float32, model_type: str | None = None, **options):
    """transformers' own causal LM for the checkpoint's model type (read from config.json unless given),
    loaded from the same checkpoint: its stock code in float32, its float64 twin (`float64_twin`) in
    float64. The MoE's default experts kernel (torch's grouped_mm) has no float64 version, so in float64
    its experts run transformers' eager loop."""
    model_type = model_type or json.loads((checkpoint / "config.json").read_text())["model_type"]
    module = reference_module(model_type, dtype)
    if dtype == torch.float64 and "moe" in model_type:
        options["experts_implementation"] = "eager"
    model = getattr(module, _REFERENCE_CLASSES[model_type][1]).from_pretrained(checkpoint, dtype=dtype, **options)
    model.eval()
    if dtype == torch.float64:
        # from_pretrained re-initialises RoPE buffers with modeling_utils' (float32) init functions for
        # scaled RoPE types such as Llama 3's (the default type uses the twin's own): recompute them.
        for rotary in (m for m in model.modules() if hasattr(m, "original_inv_freq")):
            if rotary.rope_type == "default":
                continue
            inv_freq, _ = module.ROPE_INIT_FUNCTIONS[rotary.rope_type](rotary.config)
            rotary.inv_freq.copy_(inv_freq)
            rotary.original_inv_freq.copy_(inv_freq)
    assert all(p.dtype == dtype for p in model.parameters())
    return model


def chat_prompt(checkpoint, text: str, enable_thinking: bool = True) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=True, enable_thinking=enable_thinking, return_dict=False)


def random_ids(length: int, seed: int, vocab: int = 1024) -> torch.Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def assert_chunked_parity(ours, ref, tokens, pieces: list[int], label: str, report, cache_field: str = "cache"):
    """Feed `tokens` in `pieces` through our model and transformers' `ref` (same dtype), each on its own
    cache (named `cache_field` in transformers' forward and output), asserting every logit within
    `scaled_tolerance` of transformers'."""
    assert sum(pieces) <= tokens.shape[1]
    assert ours.dtype == ref.dtype, (ours.dtype, ref.dtype)
    cache, ref_cache, start = ours.new_cache(tokens.shape[1]), None, 0
    for size in pieces:
        chunk = tokens[:, start:start + size]
        logits, hidden = ours(chunk, cache, start)
        out = ref(input_ids=chunk, use_cache=True, **{cache_field: ref_cache})
        ref_cache = getattr(out, cache_field)
        diff = (logits - out.logits).abs().max().item()
        report(f"{label} {str(ours.dtype)[6:]} tokens {start}..{start + size - 1} (scale "
               f"{out.logits.abs().max().item():.1f})", diff)
        assert_scaled_close(logits, out.logits, f"{label}: {size} tokens at {start}")
        assert hidden.shape == (1, size, ours.config.hidden_size)
        start += size


def write_tiny_config(home, tiny) -> None:
    """config.toml with two tiny models: `dense` (the default) and `moe` (adaptive draft)."""
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "config.toml").write_text(
        f'default = "dense"\n[models.dense]\npath = "{tiny["qwen3.6-dense-tiny"]}"\n'
        f'[models.moe]\npath = "{tiny["qwen3.6-moe-tiny"]}"\ndraft = "auto"\n')


def start_daemon_process(home, *args) -> subprocess.Popen:
    env = dict(os.environ, MTPCHAT_HOME=str(home))
    return subprocess.Popen([sys.executable, "-m", "daemon", "serve", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@contextlib.contextmanager
def running_daemon(home, names, *args):
    """A `mtpchatd` process for `home` (`mtpchatd serve *args`) with the models `names` resident; stopped at
    the end (exit 0) unless the test stopped it itself."""
    from mtpchat.client import DaemonClient

    process = start_daemon_process(home, *args)
    with DaemonClient(timeout_s=30) as client:
        client.request("hello")
        wait_resident(client, names)
    yield process
    if process.poll() is None:
        assert stop_process(process) == 0


def wait_until(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        time.sleep(0.05)


def wait_resident(client, names, timeout_s=60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = {m["name"]: m["state"] for m in client.request("models")["models"]}
        if all(states.get(n) == "resident" for n in names):
            return
        time.sleep(0.1)
    raise AssertionError(f"models not resident: {states}")


def stop_process(process) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


def generation(model, prompt: list[int], max_tokens: int, stop_ids=(), *, drafter=None, **options):
    """An engine Generation; `options` are GenerationOptions fields besides max_tokens."""
    from daemon.engine.generate import Generation
    from daemon.engine.options import GenerationOptions

    return Generation(model, prompt, GenerationOptions(max_tokens=max_tokens, **options), stop_ids, drafter=drafter)


def decode(model, prompt: list[int], max_tokens: int, stop_ids=(), **kwargs) -> list[int]:
    """The token ids the engine generates (arguments as `generation`'s)."""
    return generation(model, prompt, max_tokens, stop_ids, **kwargs).tokens()
