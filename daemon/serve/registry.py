"""The daemon's models: configured, loading, resident or failed — several resident at once.

Loading runs in a background thread so the daemon keeps answering (status shows the state); a
generate request for a model that is not resident yet waits for it (and starts its load if needed),
and gets an error if the load fails. Each load first plans where the model goes (daemon/serve/placement.py)
from the memory the devices have left, so a model that cannot fit fails before reading a weight, with
what is missing, and the others keep serving. Unloading drops every reference and returns the memory.

A model named by path or repo id instead of a configured name is added on first use under its
canonical name (one directory spelled three ways is one model), and at most `max_path_models` of
those are kept: the least recently used one not streaming is unloaded and forgotten to make room, so
neither memory nor `status` grows with every name a client tries. A name that is not a checkpoint
is refused before it is added. A model served by a remote engine (`engine = "openai"`,
daemon/serve/remote_engine.py) has nothing to load: it is resident at once. A model with `compile =
true` is resident as soon as its weights are, serving with eager steps while a background thread
compiles its decoding steps (minutes the first time on a small CPU); replies that start after that run
the compiled ones (daemon/engine/step_functions.py; with a graph lane, below, the lane's
forwards). A model on one GPU has its decoding forwards
captured as CUDA graphs right after loading (`cuda_graphs = false` turns it off): one stream at a time
replays them, in caches made for the model's context (daemon/engine/graph_lane.py); a capture that
fails leaves the model serving eagerly, and says why.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from daemon.engine.sampling import SamplingParams
from mtpchat.config import BUILTIN, Config, ModelSettings
from mtpchat.protocol import MAX_DRAFT, ProtocolError


@dataclass
class ModelEntry:
    settings: ModelSettings
    state: str = "unloaded"  # unloaded | loading | resident | failed
    error: str = ""
    progress: float = 0.0  # fraction of the weights loaded
    model: object = None
    tokenizer: object = None
    load_seconds: float = 0.0
    placement: object = None  # daemon.serve.placement.Placement, once planned
    context: int = 0  # tokens per stream: the configured context, capped at the model's limit
    checkpoint_sampling: object = None  # daemon.weights.sampling_defaults.ModelSampling, once loaded
    compile: str = "off"  # off | compiling (serving eagerly meanwhile) | on | failed (serving eagerly)
    compile_error: str = ""
    compile_seconds: float = 0.0
    graphs: str = "off"  # off | on (one stream at a time replays captured forwards) | failed (serving eagerly)
    graphs_error: str = ""
    _thread: threading.Thread | None = field(default=None, repr=False)

    def describe(self) -> dict:
        s = self.settings
        info = {"name": s.name, "path": s.path, "state": self.state, "progress": round(self.progress, 3),
                "error": self.error, "draft": s.draft, "draft_vocab": s.draft_vocab,
                "dtype": s.dtype, "device": s.device, "quantize": s.quantization.describe(), "compile": self.compile,
                "compile_error": self.compile_error, "compile_seconds": round(self.compile_seconds, 1),
                "graphs": self.graphs, "graphs_error": self.graphs_error,
                "load_seconds": round(self.load_seconds, 3)}
        if s.engine != "local":
            info.update(engine=s.engine, url=s.url, remote_model=s.model)
        if self.placement is not None:
            info.update(placement=self.placement.describe(), context=self.context)
        if self.model is not None:
            info.update(device=str(self.model.device), dtype=str(self.model.dtype).removeprefix("torch."),
                        mtp_head=self.model.mtp is not None, sampling=self._effective_sampling(True),
                        sampling_no_thinking=self._effective_sampling(False),
                        thinking_mode="enable_thinking" in (self.tokenizer.chat_template or ""))
        return info

    def sampling_defaults(self, thinking: bool) -> dict:
        """The sampling settings a request that sets none gets (a resident model): config.toml's over the
        checkpoint's; what neither gives stays SamplingParams' built-in default (greedy)."""
        return {**self.checkpoint_sampling.defaults(thinking), **self.settings.sampling}

    def _effective_sampling(self, thinking: bool) -> dict:
        params = asdict(SamplingParams(**self.sampling_defaults(thinking)))
        del params["seed"]
        return params


# said after an out-of-memory error while loading, as placement's own shortfall says it
OUT_OF_MEMORY_ADVICE = (" (out of memory while loading, though the plan fit: another process may hold memory; "
                        "unload another model, choose a smaller dtype or quantize it, lower `context`, or lower "
                        "`max_memory` to keep more free)")
GRAPH_DEVICES = ("cuda",)  # device types whose models capture a graph lane at load (tests add "cpu": no capture)
COMPILE_BACKEND = "inductor"  # torch.compile's, for `compile = true` (tests trace with "eager": seconds, not minutes)


class ModelRegistry:
    def __init__(self, config: Config):
        from daemon.engine.state_cache import StateCache

        self.default = config.default
        self.max_memory = config.max_memory
        self.states = StateCache(config.state_cache, config.state_cache_by_device)
        self.entries = {name: ModelEntry(settings) for name, settings in config.models.items()}
        self.configured = frozenset(config.models)
        self.max_path_models = config.daemon.max_path_models
        self._path_uses: list[str] = []  # models added by path, least recently used first
        self._lock = threading.Lock()
        # one load at a time: building on the meta device is a process-wide torch mode
        self._loading = threading.Lock()

    def entry(self, name: str | None, in_use: Collection[str] = (), quantize: str | None = None) -> ModelEntry | None:
        """A configured model by name; a checkpoint directory or hub repo id (anything with a '/') is
        added on first use under its canonical name, so `ask --model PATH` works without configuration.
        With a `quantize` other than the model's own, a variant "NAME@METHOD" is added the same way (a
        model of its own, loaded beside the configured one). Raises ProtocolError when the name is no
        checkpoint, or when every kept path model is streaming (`in_use`: the names with generations)."""
        entry = self._named(name or self.default, in_use)
        if entry is None or quantize is None or quantize == entry.settings.quantize:
            return entry
        variant = f"{entry.settings.name}@{quantize}"
        if variant not in self.entries:
            self.entries[variant] = ModelEntry(dataclasses.replace(entry.settings, name=variant, quantize=quantize,
                                                                   load_at_start=False))
        return self.entries[variant]

    def _named(self, name: str, in_use: Collection[str]) -> ModelEntry | None:
        if name in self.configured or "/" not in name:
            return self.entries.get(name)
        name = canonical_checkpoint_name(name)
        if name not in self.entries:
            self._make_room(in_use)
            self.entries[name] = ModelEntry(ModelSettings(name, name, load_at_start=False))
        if name in self._path_uses:
            self._path_uses.remove(name)
        self._path_uses.append(name)
        return self.entries[name]

    def known(self, name: str) -> ModelEntry | None:
        """The entry a name refers to, if the registry has it (a path in any spelling); adds nothing."""
        if name in self.entries or "/" not in name:
            return self.entries.get(name)
        try:
            return self.entries.get(canonical_checkpoint_name(name))
        except ProtocolError:
            return None

    def _make_room(self, in_use: Collection[str]) -> None:
        while len(self._path_uses) >= self.max_path_models:
            idle = [name for name in self._path_uses if name not in in_use]
            if not idle:
                raise ProtocolError("busy", f"all {self.max_path_models} models loaded by path are streaming "
                                            "(max_path_models in config.toml); retry later")
            self._path_uses.remove(idle[0])
            self.unload(idle[0])
            del self.entries[idle[0]]

    def load(self, name: str) -> ModelEntry:
        """Start loading in the background (no-op when resident or already loading)."""
        entry = self.entries[name]
        with self._lock:
            if entry.state in ("loading", "resident"):
                return entry
            if entry.settings.engine != "local":
                entry.state = "resident"
                return entry
            entry.state, entry.error, entry.progress, entry.placement = "loading", "", 0.0, None
            entry._thread = threading.Thread(target=self._load, args=(entry,), name=f"load-{name}", daemon=True)
            entry._thread.start()
        return entry

    def _in_use(self) -> dict[str, int]:
        """Bytes the planned models hold per device (resident or being loaded)."""
        used: dict[str, int] = {}
        for entry in self.entries.values():
            if entry.placement is not None and entry.state in ("loading", "resident"):
                for device, nbytes in entry.placement.bytes_by_device.items():
                    used[device] = used.get(device, 0) + nbytes
        return used

    def _plan(self, entry: ModelEntry, path: str):
        from daemon.serve.footprint import checkpoint_footprint, device_budgets
        from daemon.serve.placement import plan_placement
        from daemon.weights.loader import DTYPES, default_dtype

        settings = entry.settings
        budgets = device_budgets(self.max_memory, self._in_use(), self.states.budget)
        first = settings.devices[0] if settings.devices else ("cuda" if len(budgets) > 1 else "cpu")
        dtype = DTYPES[settings.dtype] if settings.dtype else default_dtype(torch.device(first))
        footprint, entry.context = checkpoint_footprint(path, dtype, settings.context, settings.quantization)
        return plan_placement(settings.name, footprint, budgets, settings.devices), dtype

    def _load(self, entry: ModelEntry) -> None:
        from daemon.weights.chat_model import load_chat_model
        from daemon.weights.checkpoint import resolve_checkpoint
        from daemon.weights.sampling_defaults import checkpoint_sampling

        started = time.perf_counter()
        settings = entry.settings
        error = ""
        try:
            with self._loading:  # also serialises transformers' lazy imports, which are not thread-safe
                path = settings.path
                if path.startswith(BUILTIN):
                    from daemon.weights.builtin_models import builtin_checkpoint

                    path = builtin_checkpoint(path)
                entry.placement, dtype = self._plan(entry, path)
                model, tokenizer = load_chat_model(path, dtype=dtype, placement=entry.placement,
                                                   progress=lambda fraction: setattr(entry, "progress", fraction),
                                                   quantization=settings.quantization)
                entry.checkpoint_sampling = checkpoint_sampling(resolve_checkpoint(path))
        except Exception as exc:  # any failure is reported to clients; the daemon keeps serving
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):  # the plan fit, the devices did not
                error += OUT_OF_MEMORY_ADVICE
        if error:
            _release_memory()  # what the partial load held, its traceback gone now, before a retry can start
            entry.state, entry.error = "failed", error
            return
        if settings.cuda_graphs and model.device.type in GRAPH_DEVICES:
            self._capture(entry, model)
        entry.model, entry.tokenizer = model, tokenizer
        entry.load_seconds = time.perf_counter() - started
        entry.state = "resident"
        if settings.compile:
            entry.compile = "compiling"
            threading.Thread(target=self._compile, args=(entry, model), name=f"compile-{settings.name}",
                             daemon=True).start()

    def _capture(self, entry: ModelEntry, model) -> None:
        """Capture the model's decoding forwards for one stream at its context (before it serves)."""
        from daemon.engine.graph_lane import install_graph_lane

        try:
            install_graph_lane(model, entry.context, entry.settings.draft_vocab)
            entry.graphs, entry.graphs_error = "on", ""
        except Exception as exc:  # a split model, an unsupported op, out of memory: the model serves eagerly
            entry.graphs, entry.graphs_error = "failed", f"{type(exc).__name__}: {exc}"
            _release_memory()

    def _compile(self, entry: ModelEntry, model) -> None:
        """Compile the model's decoding steps while it serves with eager ones; replies that start after
        run compiled. A model with a graph lane compiles the lane's forwards instead, and captures them
        again. A failure (no C++ compiler, an inductor error) leaves it serving eagerly, and says why."""
        from daemon.engine.graph_lane import graph_lane
        from daemon.engine.step_functions import compile_steps

        started = time.perf_counter()
        try:
            lane = graph_lane(model)
            if lane is not None:
                lane.compile(COMPILE_BACKEND)
            else:
                compile_steps(model, MAX_DRAFT if model.mtp is not None else 0, (entry.settings.draft_vocab,),
                              backend=COMPILE_BACKEND)
            outcome, error = "on", ""
        except Exception as exc:  # the model still serves, eagerly
            outcome, error = "failed", f"{type(exc).__name__}: {exc}"
        if entry.model is model:  # not unloaded meanwhile
            entry.compile, entry.compile_error = outcome, error
            entry.compile_seconds = time.perf_counter() - started

    def unload(self, name: str) -> ModelEntry:
        entry = self.entries[name]
        if entry._thread is not None:
            entry._thread.join()
        entry.model = entry.tokenizer = entry.placement = None
        self.states.drop_model(name)
        entry.state, entry.error, entry.progress = "unloaded", "", 0.0
        entry.compile, entry.compile_error = "off", ""
        entry.graphs, entry.graphs_error = "off", ""
        _release_memory()
        return entry

    def describe(self) -> list[dict]:
        """Called from the socket thread while the engine may add entries: iterate over a copy."""
        return [entry.describe() | {"default": name == self.default} for name, entry in list(self.entries.items())]


def _release_memory() -> None:
    """Hand freed tensors' memory back: collect cycles, and return CUDA's cached blocks to the device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def canonical_checkpoint_name(name: str) -> str:
    """A directory's absolute, resolved path; a hub repo id as written. ProtocolError if it is neither."""
    from daemon.weights.checkpoint import CheckpointError, resolve_checkpoint

    try:
        resolve_checkpoint(name)
    except CheckpointError as exc:
        raise ProtocolError("unknown_model", str(exc)) from None
    local = Path(name).expanduser()
    return str(local.resolve()) if local.is_dir() else name
