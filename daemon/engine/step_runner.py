"""Captures a model's fixed-shape steps once per draft length k and replays them; a greedy decoder on top.

At batch 1 a decode step is a few hundred small kernels: launched one by one from Python, the GPU
waits on the CPU (eager HF decode is overhead bound). So `StepRunner` owns preallocated,
full-capacity caches and the static buffers of `static_steps`, and turns each step (1-token decode,
(k+1)-token verify, MTP draft chain) into one callable: on CUDA a `torch.cuda.CUDAGraph` replay, on
the CPU the step itself (optionally `torch.compile`d) — the same buffers, the same calls, so
everything but the capture call runs in the CPU tests. A runner serves one sequence at a time;
`reset` + `prefill` start the next. The host reads the emitted tokens once per step, after it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from daemon.engine.cuda_graph import cuda_graph
from daemon.engine.static_steps import StepBuffers, draft_step, prefill, verify_step
from daemon.model.text_model import QwenModel


def compile_options(device: torch.device) -> dict:
    """Inductor options for the steps: on a CPU whose kernels dispatch at AVX2 (no AVX-512, or
    ATEN_CPU_CAPABILITY=avx2), torch 2.13's vectorised code for these steps is wrong — the draft step
    loses its write of the next draft, and with that rewritten the verify step's tokens still differ
    from eager (tests/test_static_steps.py catches both) — so there every step compiles to scalar loops."""
    if device.type == "cpu" and torch.backends.cpu.get_cpu_capability() == "AVX2":
        return {"cpp.simdlen": 1}
    return {}


class StepRunner:
    def __init__(self, model: QwenModel, capacity: int, k: int, *, compile: bool = False,
                 capture: bool | None = None, draft_vocab: int | None = None):
        """k: drafts per step (0 = plain decoding without the MTP head); capture: CUDA graphs (default:
        on CUDA); compile: torch.compile each step (fullgraph) before capturing it."""
        if k and model.mtp is None:
            raise ValueError("this checkpoint has no MTP head: use plain decoding (k = 0)")
        self.model, self.capacity, self.k = model, capacity, k
        self.capture = model.device.type == "cuda" if capture is None else capture
        with torch.inference_mode():
            for device in {*model.layer_devices(), model.output_device}:
                model.rotary_frequencies(device)  # made once here, not inside the first traced step
            self.cache = model.new_cache(capacity, max_steps=k + 1 if k else 0)
            self.mtp_cache = model.new_mtp_cache(capacity) if k else None
            self.buffers = StepBuffers.allocate(model, k)
        self.vocab = draft_vocab
        step = functools.partial(verify_step, model, self.cache, self.mtp_cache, self.buffers, vocab=draft_vocab)
        steps = {"decode": functools.partial(step, 0)}
        if k:
            steps["verify"] = functools.partial(step, k)
        if k > 1:
            steps["draft"] = functools.partial(draft_step, model, self.mtp_cache, self.buffers, k, vocab=draft_vocab)
        if compile:
            steps = {name: torch.compile(fn, fullgraph=True, options=compile_options(model.device))
                     for name, fn in steps.items()}
        self.steps: dict[str, Callable[[], None]] = {name: self._captured(fn) for name, fn in steps.items()}
        self.reset()

    @torch.inference_mode()
    def _captured(self, fn: Callable[[], None]) -> Callable[[], None]:
        """A replay of `fn` over the static buffers (what its runs write there is undone by `reset`)."""
        if not self.capture:
            fn()  # a compiled step compiles here, not in the first timed step
            return fn
        # each run advances the length: stay far from the capacity
        return cuda_graph(fn, self.model.output_device, before_each_warmup=self.buffers.length.zero_)

    @torch.inference_mode()
    def reset(self) -> None:
        """Empty caches and buffers: the next sequence starts from zero state."""
        self.cache.zero_()
        if self.mtp_cache is not None:
            self.mtp_cache.zero_()
        self.buffers.zero_()

    @torch.inference_mode()
    def prefill(self, prompt_ids: list[int]) -> None:
        self.reset()
        prompt = torch.tensor([prompt_ids], device=self.model.device)
        prefill(self.model, self.cache, self.mtp_cache, self.buffers, prompt, self.vocab)

    def run(self, name: str) -> None:
        """Replay one step: "decode", "verify" or "draft"."""
        with torch.inference_mode():
            self.steps[name]()

    def read(self) -> list[int]:
        """The tokens the last decode or verify step emitted (the one host synchronisation per step)."""
        accepted, *emitted = torch.cat((self.buffers.accepted, self.buffers.emitted)).tolist()
        return emitted[:accepted + 1]


class CapturedDecoder:
    """Greedy decoding of one prompt on a runner: token-identical to `SpeculativeDecoder` (greedy, no
    penalties). Falls back to the 1-token decode step where a full verify would pass `max_tokens` or
    the capacity, so every step it takes is one of the captured shapes."""

    def __init__(self, runner: StepRunner, prompt_ids: list[int]):
        if len(prompt_ids) >= runner.capacity:
            raise ValueError(f"a prompt of {len(prompt_ids)} tokens does not fit {runner.capacity} positions")
        self.runner, self.prompt_ids = runner, prompt_ids
        self.length = 0  # the host's copy of buffers.length, for the capacity check

    def prefill(self) -> int:
        self.runner.prefill(self.prompt_ids)
        self.length = len(self.prompt_ids)
        return int(self.runner.buffers.token)

    def decode(self, max_tokens: int) -> list[int]:
        """Prefill, then step until `max_tokens` tokens (no stop tokens: benchmarks and checks)."""
        tokens = [self.prefill()]
        while len(tokens) < max_tokens:
            tokens += self.step(max_tokens - len(tokens))[0]
        return tokens

    def step(self, max_tokens: int) -> tuple[list[int], int]:
        """Emit 1..min(k+1, max_tokens) tokens; also return how many drafts were verified."""
        k = self.runner.k
        if k and k < max_tokens and self.length + k < self.runner.capacity:
            if k > 1:
                self.runner.run("draft")
            self.runner.run("verify")
        else:
            k = 0
            self.runner.run("decode")
        emitted = self.runner.read()
        self.length += len(emitted)
        return emitted, k
