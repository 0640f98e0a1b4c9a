"""Small helpers shared by tests: reference models from transformers, prompt ids, and a real
`mtpchatd` process on a real ipc socket in an isolated home."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from transformers import AutoTokenizer, Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM

TOLERANCE = 1e-4


def reference_model(checkpoint):
    """transformers' own text model, loaded from the same hub-layout checkpoint (fp32, eager)."""
    config_text = (checkpoint / "config.json").read_text()
    cls = Qwen3_5MoeForCausalLM if '"qwen3_5_moe"' in config_text else Qwen3_5ForCausalLM
    return cls.from_pretrained(checkpoint, dtype=torch.float32).eval()


def chat_prompt(checkpoint, text: str, enable_thinking: bool = True) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=True, enable_thinking=enable_thinking, return_dict=False)


def random_ids(length: int, seed: int, vocab: int = 1024) -> torch.Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def assert_chunked_parity(ours, ref, tokens, pieces: list[int], label: str, report, cache_field: str = "cache"):
    """Feed `tokens` in `pieces` through our model and transformers' `ref`, each on its own cache (named
    `cache_field` in transformers' forward and output), asserting every logit within TOLERANCE."""
    assert sum(pieces) <= tokens.shape[1]
    cache, ref_cache, start = ours.new_cache(tokens.shape[1]), None, 0
    for size in pieces:
        chunk = tokens[:, start:start + size]
        logits, hidden = ours(chunk, cache, start)
        out = ref(input_ids=chunk, use_cache=True, **{cache_field: ref_cache})
        ref_cache = getattr(out, cache_field)
        diff = (logits - out.logits).abs().max().item()
        report(f"{label} tokens {start}..{start + size - 1}", diff)
        assert diff <= TOLERANCE, f"{label}: {size} tokens at {start}: max abs diff {diff:.2e}"
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
