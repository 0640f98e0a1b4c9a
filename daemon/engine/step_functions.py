"""The forwards a decoding step runs — a 1-token decode, a (k+1)-token verify, a 1-pair MTP draft —
eager, or `torch.compile`d once per model and shared by every sequence it decodes.

Where a decode step is thousands of small PyTorch ops, inductor fuses them: the demo decoded ×1.25–1.37
faster at int4 on the CPU that way. Since this project's CPU kernels run an attention layer's step in one
call, compiling costs the demo speed on the CPU instead (×0.74 at int4, ×0.99 at fp32: README, "Compiled
steps on the CPU"), so it stays off by default; on a GPU the graph lane compiles before capture.

Unlike `StepRunner`'s fixed-shape steps (CUDA graphs need one capacity), these take the eager forward's
form — a Python start position and caches that grow — compiled with dynamic shapes, so attention reads
only the positions written so far and one graph serves every position and every sequence: one graph per
row count (1..k+1, the per-row attention loop unrolls) and one for the 1-pair MTP pass (a chained draft,
or the first draft after a step that accepted none). Caches grow outside the graph (`reserve` first), so
a growing cache never recompiles mid-reply. Prefill and the MTP pass over a prompt run once per prompt
and stay eager, as does the MTP pass over the 2..k+1 pairs of a step that accepted drafts (compiling it
would add a graph per count for one short pass).

Compiling costs minutes on a 2-core machine the first time (inductor's on-disk cache, which `mtpchatd`
keeps under the user's cache dir, makes a restart take less), so `warm_up` compiles every graph a
model's draft setting can reach before the compiled steps are used (the daemon does it in the
background after loading), never in the middle of a reply.
"""

from __future__ import annotations

import torch

from daemon.engine.step_runner import compile_options
from daemon.model.cache import AttentionCache, ModelCache
from daemon.model.text_model import QwenModel

_WARM_PROMPT, _WARM_CAPACITY = 8, 64  # warm_up's throwaway sequence
# graphs per function, over every compiled model of the process (they share the function's cache): 7 per
# model and draft vocabulary here, one per row count for a graph lane's; past the limit new graphs would
# run eagerly instead of compiling
_GRAPHS_PER_FUNCTION = 64


def allow_graphs() -> None:
    """Let each compiled function keep _GRAPHS_PER_FUNCTION graphs (torch's default limit is 8)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _GRAPHS_PER_FUNCTION)


class StepFunctions:
    """`trunk` and `mtp` with the signatures of `QwenModel.forward` and `mtp_forward`."""

    def __init__(self, model: QwenModel, compiled: bool = False, backend: str = "inductor"):
        """backend: torch.compile's ("eager" traces and guards without generating code: tests)."""
        self.model = model
        self._trunk = self._mtp = None
        if compiled:
            allow_graphs()
            options = compile_options(model.device) if backend == "inductor" else None
            self._trunk = torch.compile(_trunk_step, dynamic=True, fullgraph=True, backend=backend, options=options)
            self._mtp = torch.compile(_mtp_step, dynamic=True, fullgraph=True, backend=backend, options=options)

    @property
    def compiled(self) -> bool:
        return self._trunk is not None

    def trunk(self, ids: torch.Tensor, cache: ModelCache, start: int, *,
              keep_steps: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if self._trunk is None:
            return self.model(ids, cache, start, keep_steps=keep_steps)
        cache.reserve(start + ids.shape[1])  # growth happens here, eagerly, never inside a graph
        return self._trunk(self.model, _fresh(ids), cache, start, keep_steps)

    def mtp(self, next_ids: torch.Tensor, hidden: torch.Tensor, cache: AttentionCache, start: int, *,
            vocab: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The MTP head's logits for the last pair only, and its output for all pairs."""
        if self._mtp is None or next_ids.shape[1] != 1:
            return self.model.mtp_forward(next_ids, hidden, cache, start, vocab=vocab, last_only=True)
        cache.reserve(start + 1)
        return self._mtp(self.model, _fresh(next_ids), _fresh(hidden), cache, start, vocab)

    @torch.inference_mode()
    def warm_up(self, max_k: int, vocab: int | None = None) -> None:
        """Compile now every graph a sequence drafting at most `max_k` tokens per step reaches: the
        plain decode (over plain and over speculative caches: their DeltaNet step slots differ), each
        verify of 2..max_k+1 rows and the draft pair. Sizes avoid 0 and 1, which torch specialises."""
        if not self.compiled:
            return
        model, prompt = self.model, torch.arange(2, 2 + _WARM_PROMPT, device=self.model.device)[None]
        for k in sorted({0, max_k}):
            cache = model.new_cache(_WARM_CAPACITY, max_steps=k + 1 if k else 0, initial_len=_WARM_PROMPT + 2)
            _, hidden = model(prompt, cache, 0)
            start = _WARM_PROMPT
            for rows in range(1, k + 2):
                _mark_dynamic(cache)  # growth made new tensors
                self.trunk(prompt[:, :rows], cache, start, keep_steps=rows > 1)
                start += rows
            if k and model.mtp is not None:
                mtp_cache = model.new_mtp_cache(_WARM_CAPACITY, initial_len=_WARM_PROMPT)
                _mark_dynamic(mtp_cache)
                self.mtp(prompt[:, :1], hidden[:, :1], mtp_cache, 2, vocab=vocab)


def _fresh(tensor: torch.Tensor) -> torch.Tensor:
    """A copy with standard strides and no offset: a slice's would each guard, and recompile."""
    return tensor.clone(memory_format=torch.contiguous_format)


def _mark_dynamic(cache: ModelCache | AttentionCache) -> None:
    """Compile graphs for any cache length and any number of DeltaNet step slots (a request's draft k):
    torch.compile's dynamic=True does not reach tensors held by an argument's attributes."""
    for layer in cache.layers if isinstance(cache, ModelCache) else [cache]:
        if isinstance(layer, AttentionCache):
            torch._dynamo.maybe_mark_dynamic(layer.keys, 2)
            torch._dynamo.maybe_mark_dynamic(layer.values, 2)
        elif layer.state_steps.shape[0]:
            torch._dynamo.maybe_mark_dynamic(layer.conv_steps, 0)
            torch._dynamo.maybe_mark_dynamic(layer.state_steps, 0)


def _trunk_step(model: QwenModel, ids, cache, start, keep_steps):
    return model(ids, cache, start, keep_steps=keep_steps)


def _mtp_step(model: QwenModel, next_ids, hidden, cache, start, vocab):
    return model.mtp_forward(next_ids, hidden, cache, start, vocab=vocab, last_only=True)


def step_functions(model: QwenModel) -> StepFunctions:
    """The model's step functions: compiled ones once `compile_steps` ran, eager ones otherwise."""
    return getattr(model, "step_functions", None) or StepFunctions(model)


def compile_steps(model: QwenModel, max_k: int, vocabs: tuple[int | None, ...] = (None,),
                  backend: str = "inductor") -> StepFunctions:
    """Compile `model`'s steps for drafts of up to `max_k` tokens among each of `vocabs` (see `warm_up`),
    then make them the ones its new sequences use. backend: torch.compile's ("eager": tests)."""
    steps = StepFunctions(model, compiled=True, backend=backend)
    for vocab in vocabs:
        steps.warm_up(max_k, vocab)
    model.step_functions = steps
    return steps
