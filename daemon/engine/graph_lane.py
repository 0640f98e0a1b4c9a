"""The daemon's captured decoding on a GPU: one stream's full-capacity caches and a CUDA-graph replay
of every forward a decoding step of it runs.

At batch 1 an eager step on a GPU waits on Python launching hundreds of small kernels (the README's
H200 figures: the 27B shape decodes at 13.6 tok/s eager, 42.6 captured). A graph replays fixed
addresses, so a lane owns what its graphs read and write: caches allocated at the model's whole
context (what the placement plan reserves for one stream), the input ids and positions, and each
forward's outputs. Sampling, penalties, draft verification and the DeltaNet rollback stay with
`SpeculativeDecoder`, eager, so every request option works unchanged; only the trunk's 1-token
decode, its (k+1)-token verifies and the MTP head's 1-pair draft step are replayed — the forwards
that are most of a step's kernels. A lane has the interface of `StepFunctions`: the decoder that
`acquire`s it decodes in its caches with its forwards; other streams, and anything a lane was not
captured for (a larger k, another draft vocabulary, a longer context), decode eagerly as before.

On the CPU the same lane runs each forward directly over the same static buffers (no capture): the
tests exercise every line but the capture call (daemon/engine/cuda_graph.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from daemon.engine.cuda_graph import cuda_graph
from daemon.engine.step_functions import allow_graphs, step_functions
from daemon.engine.step_runner import compile_options
from daemon.model.cache import AttentionCache, ModelCache
from daemon.model.text_model import QwenModel
from mtpchat.protocol import MAX_DRAFT


class _Replay:
    """A forward over static inputs whose results are copied into static outputs (a graph's outputs
    live at fixed addresses that the next replay overwrites: a call returns copies)."""

    def __init__(self, forward: Callable[[], tuple[torch.Tensor, ...]]):
        self.forward = forward
        self.outputs: tuple[torch.Tensor, ...] | None = None
        self.run: Callable[[], None] = self._run

    def _run(self) -> None:
        results = self.forward()
        if self.outputs is None:
            self.outputs = tuple(result.clone() for result in results)  # allocated outside any capture
        else:
            for output, result in zip(self.outputs, results, strict=True):
                output.copy_(result)

    def __call__(self) -> tuple[torch.Tensor, ...]:
        self.run()
        return tuple(output.clone() for output in self.outputs)


class GraphLane:
    def __init__(self, model: QwenModel, capacity: int, max_k: int, vocab: int | None = None, *,
                 capture: bool | None = None):
        """capacity: positions per sequence; max_k: the most drafts a step may verify (0: plain only);
        vocab: the draft vocabulary the MTP step is captured for; capture: CUDA graphs (default: on CUDA)."""
        if max_k and model.mtp is None:
            raise ValueError("this checkpoint has no MTP head: a lane for plain decoding has max_k = 0")
        self.model, self.capacity, self.max_k, self.vocab = model, capacity, max_k, vocab
        self.capture = model.device.type == "cuda" if capture is None else capture
        if self.capture and len({*model.layer_devices(), model.device, model.output_device}) > 1:
            raise ValueError("a lane captures a model on one GPU; a model split across devices decodes eagerly")
        self._busy = threading.Lock()
        device, rows = model.device, max_k + 1
        with torch.inference_mode():
            model.rotary_frequencies(device)  # made once here, not inside a capture
            self.cache = model.new_cache(capacity, max_steps=rows if max_k else 0)
            self.mtp_cache = model.new_mtp_cache(capacity) if max_k else None
            self._ids = torch.zeros(1, rows, dtype=torch.long, device=device)
            self._positions = torch.zeros(rows, dtype=torch.long, device=device)
            self._offsets = torch.arange(rows, device=device)
            self._draft_hidden = torch.zeros(1, 1, model.config.hidden_size, dtype=model.dtype, device=device)
        self.compiled = False
        self._trunk, self._draft = self._replays()

    def _replays(self, backend: str | None = None) -> tuple[dict[tuple[int, bool], _Replay], _Replay | None]:
        """Every forward's replay over the lane's buffers; with `backend`, each torch.compile'd first."""
        pool = torch.cuda.graph_pool_handle() if self.capture else None  # the replays never overlap
        forwards = {(1, False): self._trunk_forward(1, False)}
        forwards.update({(rows, True): self._trunk_forward(rows, True) for rows in range(2, self.max_k + 2)})
        if self.max_k:
            forwards["draft"] = self._draft_forward
        if backend is not None:
            options = compile_options(self.model.device) if backend == "inductor" else None
            forwards = {key: torch.compile(forward, fullgraph=True, dynamic=False, backend=backend, options=options)
                        for key, forward in forwards.items()}
        replays = {key: self._replay(forward, pool) for key, forward in forwards.items()}
        return replays, replays.pop("draft", None)

    def _trunk_forward(self, rows: int, keep_steps: bool) -> Callable[[], tuple[torch.Tensor, ...]]:
        ids, positions = self._ids[:, :rows], self._positions[:rows]
        return lambda: self.model.forward_at(ids, self.cache, positions, keep_steps=keep_steps)

    def _draft_forward(self) -> tuple[torch.Tensor, ...]:
        return self.model.mtp_forward_at(self._ids[:, :1], self._draft_hidden, self.mtp_cache, self._positions[:1],
                                         vocab=self.vocab)

    @torch.inference_mode()
    def _replay(self, forward: Callable[[], tuple[torch.Tensor, ...]], pool) -> _Replay:
        replay = _Replay(forward)
        replay.run()  # compiles a compiled forward; makes the static outputs and lazy buffers before any capture
        if self.capture:
            replay.run = cuda_graph(replay.run, self.model.device, pool=pool)
        return replay  # what the runs wrote in the caches is zeroed when a sequence takes the lane

    def compile(self, backend: str = "inductor") -> None:
        """Replace the replays by ones of torch.compile'd forwards (fused kernels, fewer of them), over the
        same buffers. Waits for the sequence holding the lane, and holds it meanwhile (minutes the first
        time): sequences that start then decode eagerly. backend: torch.compile's ("eager": tests)."""
        allow_graphs()
        with self._busy:
            self._trunk, self._draft = self._replays(backend)
            self.compiled = True

    # --- the decoder's side: one sequence at a time -------------------------------------------------

    def acquire(self, capacity: int, k: int) -> bool:
        """Take the lane for a sequence of up to `capacity` positions drafting up to `k` tokens a step,
        with zeroed caches; False when another sequence holds it or it was not made for that."""
        if capacity > self.capacity or k > self.max_k or not self._busy.acquire(blocking=False):
            return False
        with torch.inference_mode():
            self.cache.zero_()
            if self.mtp_cache is not None:
                self.mtp_cache.zero_()
        return True

    def release(self) -> None:
        self._busy.release()

    # --- StepFunctions' interface -------------------------------------------------------------------

    def trunk(self, ids: torch.Tensor, cache: ModelCache, start: int, *,
              keep_steps: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        assert cache is self.cache, "a lane's forwards run on its own caches"
        replay = self._trunk.get((ids.shape[1], keep_steps))
        if replay is None:
            return step_functions(self.model).trunk(ids, cache, start, keep_steps=keep_steps)
        rows = ids.shape[1]
        self._ids[:, :rows].copy_(ids)
        torch.add(self._offsets[:rows], start, out=self._positions[:rows])
        return replay()

    def mtp(self, next_ids: torch.Tensor, hidden: torch.Tensor, cache: AttentionCache, start: int, *,
            vocab: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The MTP head's logits for the last pair only, and its output for all pairs (as StepFunctions')."""
        assert cache is self.mtp_cache, "a lane's forwards run on its own caches"
        if self._draft is None or next_ids.shape[1] != 1 or vocab != self.vocab:
            return step_functions(self.model).mtp(next_ids, hidden, cache, start, vocab=vocab)
        self._ids[:, :1].copy_(next_ids)
        self._draft_hidden.copy_(hidden)
        self._positions[:1].fill_(start)
        return self._draft()


def install_graph_lane(model: QwenModel, capacity: int, vocab: int | None = None, *,
                       max_k: int | None = None) -> GraphLane:
    """Capture a lane for `model` (on its GPU) and make it the one its new sequences try first; by
    default for every draft length a request may ask (none without an MTP head)."""
    if max_k is None:
        max_k = MAX_DRAFT if model.mtp is not None else 0
    lane = GraphLane(model, capacity, max_k, vocab)
    model.graph_lane = lane
    return lane


def graph_lane(model: QwenModel) -> GraphLane | None:
    return getattr(model, "graph_lane", None)
