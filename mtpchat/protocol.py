"""The wire protocol between mtpchat clients and the mtpchatd daemon, in one module.

Both sides import this module, so framing, versioning and request validation cannot drift apart:
the client packs requests with it, the daemon unpacks and validates them with it into typed requests
(one frozen dataclass per op), and the daemon's replies are built with it. The constants both sides
read — the draft limit and settings, the stats keys — are defined here once. Everything that crosses
the socket is decoded here first, so a malformed frame becomes a ProtocolError (answered with an
error reply), never a crash. The specification a third party can implement a client from is
docs/protocol.md; keep the two in step.

Stdlib and msgpack only: the client side must run on a laptop without torch or the daemon's deps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import msgpack

VERSION = 1
MAX_FRAME_BYTES = 1 << 20  # larger frames are refused
MAX_NESTING = 16  # deeper maps/arrays are refused (a request needs 3 levels, a reply 4)
TERMINAL = ("done", "error", "cancelled")  # reply types that end a request

MAX_DRAFT = 4  # the most tokens the MTP head drafts per step
DRAFT_AUTO = "auto"  # the draft setting that picks k per step (adaptive, at most MAX_DRAFT)
DRAFT_CHOICES = (*range(MAX_DRAFT + 1), DRAFT_AUTO)  # every draft setting; 0 decodes plainly
QUANTIZE_CHOICES = ("none", "int8", "int4", "fp8")  # quantized weights of a model (mtpchat.config.Quantization)

# Stats keys, named as vLLM names its speculative-decoding metrics (docs/protocol.md, "stats map"):
# the daemon writes them, clients read them.
PROMPT_TOKENS = "prompt_tokens"
CACHED_TOKENS = "cached_tokens"  # prompt tokens resumed from the conversation state cache
PREFILL_TOKENS = "prefill_tokens"  # prompt tokens run through the model
GENERATED_TOKENS = "generated_tokens"
DRAFT_K = "draft_k"
DRAFTS = "drafts"  # verification steps that carried drafts
DRAFTED_TOKENS = "drafted_tokens"
ACCEPTED_TOKENS = "accepted_tokens"
ACCEPTANCE_RATE = "acceptance_rate"  # accepted / drafted tokens
MEAN_ACCEPTANCE_LENGTH = "mean_acceptance_length"  # 1 + accepted tokens / drafts
ACCEPTED_PER_POSITION = "accepted_per_position"
DRAFTED_PER_POSITION = "drafted_per_position"
ACCEPTANCE_PER_POSITION = "acceptance_per_position"
# true when a remote engine's acceptance figures are estimates (its counters also moved for another
# stream); absent when they are exact. Not in STATS: the local engine's figures are always exact.
ACCEPTANCE_APPROXIMATE = "acceptance_approximate"
PREFILL_TOK_S = "prefill_tok_s"
DECODE_TOK_S = "decode_tok_s"
TIME_TO_FIRST_TOKEN_S = "time_to_first_token_s"
PREFILL_S = "prefill_s"
DECODE_S = "decode_s"
PEAK_MEMORY_BYTES = "peak_memory_bytes"
STATE_BYTES = "state_bytes"
FINISH_REASON = "finish_reason"
STATS = (DRAFT_K, PROMPT_TOKENS, CACHED_TOKENS, PREFILL_TOKENS, GENERATED_TOKENS, DRAFTS, DRAFTED_TOKENS,
         ACCEPTED_TOKENS, ACCEPTED_PER_POSITION, PREFILL_S, DECODE_S, TIME_TO_FIRST_TOKEN_S, PEAK_MEMORY_BYTES,
         STATE_BYTES, FINISH_REASON, DRAFTED_PER_POSITION, ACCEPTANCE_RATE, MEAN_ACCEPTANCE_LENGTH,
         ACCEPTANCE_PER_POSITION, PREFILL_TOK_S, DECODE_TOK_S)  # a done reply's stats map
RUNNING_STATS = (GENERATED_TOKENS, DECODE_TOK_S, ACCEPTANCE_RATE, MEAN_ACCEPTANCE_LENGTH, ACCEPTANCE_PER_POSITION,
                 DRAFT_K, PROMPT_TOKENS, CACHED_TOKENS, TIME_TO_FIRST_TOKEN_S)  # a chunk's stats map so far

_ROLES = ("system", "user", "assistant")
_MAX_ID_CHARS = 64
_MAX_MODEL_CHARS = 512
_MAX_MESSAGES = 1000
_MAX_TOKENS = 1_000_000
_MAX_TEMPERATURE = 100
# Beyond ~2 a repetition penalty wrecks text anyway; 10 leaves room to experiment and still catches a slip
# like 15 for 1.5. Below 1 it favours repetition; its mirror image 1/10 is the floor, so a logit is scaled
# at most tenfold either way (a tiny penalty like 1e-40 would scale logits to inf, and sampling to NaN).
# Presence/frequency penalties use OpenAI's range, which vLLM enforces too.
MAX_REPETITION_PENALTY = 10
MIN_REPETITION_PENALTY = 1 / MAX_REPETITION_PENALTY
_MAX_ADDITIVE_PENALTY = 2
_MAX_STOPS = 16
_MAX_STOP_CHARS = 256


class ProtocolError(Exception):
    """A frame or request that breaks the protocol; `code` and `message` go into the error reply.

    `request_id` is the offending request's id when it could be read (None otherwise), so the
    daemon can address the error reply to the request the client is waiting on.
    """

    def __init__(self, code: str, message: str, request_id: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


def pack(message: dict) -> bytes:
    """Encode one message as a frame, adding the protocol version unless the message has one."""
    frame = msgpack.packb({"v": VERSION, **message}, use_bin_type=True)
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"frame is {len(frame)} bytes, limit {MAX_FRAME_BYTES}")
    return frame


def unpack(frame: bytes) -> dict:
    """Decode one frame into a message map of this protocol version, or raise ProtocolError."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"frame is {len(frame)} bytes, limit {MAX_FRAME_BYTES}")
    try:
        message = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            # nothing can be longer than the frame holding it: refuse headers claiming more
            # before anything is allocated
            max_str_len=len(frame),
            max_bin_len=len(frame),
            max_array_len=len(frame),
            max_map_len=len(frame) // 2,
            max_ext_len=0,  # no ext types, timestamps included
        )
    except msgpack.exceptions.StackError:  # msgpack's own depth limit, hit before ours can be checked
        raise ProtocolError("malformed_frame", f"nested deeper than {MAX_NESTING} levels") from None
    except ValueError as exc:  # every msgpack decoding failure is a ValueError subclass
        raise ProtocolError("malformed_frame", f"not a msgpack value: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("malformed_frame", "frame must be a msgpack map")
    if _nesting_exceeds(message, MAX_NESTING):
        raise ProtocolError("malformed_frame", f"nested deeper than {MAX_NESTING} levels")
    version = message.get("v")
    if not _is_int(version):
        raise ProtocolError("malformed_frame", "v: must be an integer protocol version")
    if version != VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {version} is not supported, this side speaks {VERSION}",
            _readable_id(message),
        )
    return message


def parse_request(message: dict) -> Request:
    """Validate a client request; return its typed form (a Request subclass per op), defaults filled.

    Unknown fields are ignored. Raises ProtocolError("invalid_request", "<field>: <problem>") or
    ProtocolError("unknown_op", ...), carrying the request id once it has been read.
    """
    request_id = _id("id", message.get("id"))
    try:
        op = message.get("op")
        if not isinstance(op, str):
            raise _invalid("op", "must be a string")
        if op not in OPS:
            raise ProtocolError("unknown_op", f"op: must be one of {', '.join(OPS)}")
        return _PARSERS[op](request_id, message)
    except ProtocolError as exc:
        exc.request_id = request_id
        raise


def reply(request_id: str, type: str, **fields) -> dict:
    """A reply message for `request_id`; pass it to pack()."""
    return {"v": VERSION, "id": request_id, "type": type, **fields}


def error_reply(request_id: str | None, code: str, message: str) -> dict:
    """An "error" reply; request_id is None when the frame could not be parsed."""
    return reply(request_id, "error", code=code, message=message)


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """A validated request: every op has its id; `op` is fixed per subclass."""
    id: str
    op: ClassVar[str]


@dataclass(frozen=True)
class HelloRequest(Request):
    op: ClassVar[str] = "hello"
    client: str = ""


@dataclass(frozen=True)
class StatusRequest(Request):
    op: ClassVar[str] = "status"


@dataclass(frozen=True)
class ModelsRequest(Request):
    op: ClassVar[str] = "models"


@dataclass(frozen=True)
class LoadRequest(Request):
    op: ClassVar[str] = "load"
    model: str


@dataclass(frozen=True)
class UnloadRequest(Request):
    op: ClassVar[str] = "unload"
    model: str


@dataclass(frozen=True)
class CancelRequest(Request):
    op: ClassVar[str] = "cancel"
    target: str


@dataclass(frozen=True)
class GenerateRequest(Request):
    """A reply to generate; the defaults are the wire's. `model` None: the daemon's default model;
    `draft` None (not sent): the model's configured draft setting; a sampling field None (not sent): the
    model's default for it (`sampling` holds the ones sent)."""
    op: ClassVar[str] = "generate"
    messages: tuple[dict, ...]
    model: str | None = None
    system: str | None = None
    max_tokens: int = 512
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    draft: int | str | None = None
    quantize: str | None = None  # None (not sent): the model's configured quantization
    thinking: bool = True
    stop: tuple[str, ...] = ()

    @property
    def sampling(self) -> dict:
        """The sampling fields this request sets; the daemon takes the model's defaults for the others."""
        return {name: getattr(self, name) for name in SAMPLING_FIELDS if getattr(self, name) is not None}


def _hello(request_id: str, message: dict) -> HelloRequest:
    client = message.get("client", HelloRequest.client)
    if not isinstance(client, str):
        raise _invalid("client", "must be a string")
    return HelloRequest(request_id, client)


def _load(request_id: str, message: dict) -> LoadRequest:
    return LoadRequest(request_id, _model_name(message.get("model")))


def _unload(request_id: str, message: dict) -> UnloadRequest:
    return UnloadRequest(request_id, _model_name(message.get("model")))


def _cancel(request_id: str, message: dict) -> CancelRequest:
    return CancelRequest(request_id, _id("target", message.get("target")))


def _generate(request_id: str, message: dict) -> GenerateRequest:
    get = message.get
    model = get("model")
    system = get("system")
    if system is not None and not isinstance(system, str):
        raise _invalid("system", "must be a string or null")
    quantize = get("quantize")
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise _invalid("quantize", f"must be one of {', '.join(map(repr, QUANTIZE_CHOICES))} or null")
    thinking = get("thinking", GenerateRequest.thinking)
    if not isinstance(thinking, bool):
        raise _invalid("thinking", "must be a boolean")
    return GenerateRequest(
        request_id,
        messages=_messages(get("messages")),
        model=None if model is None else _model_name(model),
        system=system,
        **reply_settings(message),
        quantize=quantize,
        thinking=thinking,
        stop=_stops(get("stop", [])),
    )


def reply_settings(fields: dict) -> dict:
    """The settings of a reply among `fields` (the sampling fields, `draft`, `max_tokens`, `seed`), checked
    (absent ones left out; a null seed too); a bad one raises ProtocolError("invalid_request", "<field>:
    <problem>"). A generate request and a conversation's saved settings (the TUI's settings dialog) both go
    through here, so the dialog refuses what the daemon would."""
    checked = sampling_fields(fields)
    if "draft" in fields:
        draft = fields["draft"]
        if draft != DRAFT_AUTO and not (_is_int(draft) and 0 <= draft <= MAX_DRAFT):
            raise _invalid("draft", f'must be an integer from 0 to {MAX_DRAFT} or "{DRAFT_AUTO}"')
        checked["draft"] = draft
    if "max_tokens" in fields:
        checked["max_tokens"] = _int_in("max_tokens", fields["max_tokens"], 1, _MAX_TOKENS)
    if fields.get("seed") is not None:
        if not _is_int(fields["seed"]):
            raise _invalid("seed", "must be an integer or null")
        checked["seed"] = fields["seed"]
    return checked


def sampling_fields(fields: dict) -> dict:
    """The sampling settings among `fields`, checked (absent ones left out); a bad one raises
    ProtocolError("invalid_request", "<field>: <problem>"). A generate request and a model's
    [models.NAME.sampling] table in config.toml both go through here, so both accept the same values."""
    checked = {}
    for name, bounds in SAMPLING_BOUNDS.items():
        if name in fields:
            checked[name] = bounds.check(name, fields[name])
    return checked


@dataclass(frozen=True)
class Bounds:
    """The values a sampling field accepts: `low` to `high` (None: no upper limit), `low` itself refused
    when `low_open`; whole numbers only when `integer`."""
    low: float
    high: float | None
    low_open: bool = False
    integer: bool = False

    def check(self, field: str, value) -> float | int:
        if self.integer:
            return _int_in(field, value, self.low, self.high)
        value = _number(field, value)
        low, high = self.low, self.high
        if not (low < value if self.low_open else low <= value) or not value <= high:  # NaN fails both
            raise _invalid(field, f"must be {'greater than' if self.low_open else 'at least'} {low:g} "
                                  f"and at most {high:g}")
        return value


SAMPLING_BOUNDS = {
    "temperature": Bounds(0, _MAX_TEMPERATURE),
    "top_p": Bounds(0, 1, low_open=True),
    "top_k": Bounds(0, None, integer=True),
    "min_p": Bounds(0, 1),
    "repetition_penalty": Bounds(MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY),
    "presence_penalty": Bounds(-_MAX_ADDITIVE_PENALTY, _MAX_ADDITIVE_PENALTY),
    "frequency_penalty": Bounds(-_MAX_ADDITIVE_PENALTY, _MAX_ADDITIVE_PENALTY),
}
SAMPLING_FIELDS = tuple(SAMPLING_BOUNDS)  # every setting a model default may give and a request may override
REPLY_SETTINGS = (*SAMPLING_FIELDS, "draft", "max_tokens", "seed")  # what reply_settings() checks


_PARSERS = {
    HelloRequest.op: _hello,
    StatusRequest.op: lambda request_id, message: StatusRequest(request_id),
    ModelsRequest.op: lambda request_id, message: ModelsRequest(request_id),
    LoadRequest.op: _load,
    UnloadRequest.op: _unload,
    GenerateRequest.op: _generate,
    CancelRequest.op: _cancel,
}
OPS = tuple(_PARSERS)


# ---------------------------------------------------------------- field checks


def _invalid(field: str, problem: str) -> ProtocolError:
    return ProtocolError("invalid_request", f"{field}: {problem}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(field: str, value, max_chars: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise _invalid(field, f"must be a string of 1 to {max_chars} characters")
    return value


def _id(field: str, value) -> str:
    return _text(field, value, _MAX_ID_CHARS)


def _model_name(value) -> str:
    return _text("model", value, _MAX_MODEL_CHARS)


def _int_in(field: str, value, low: int, high: int | None = None) -> int:
    if not _is_int(value) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise _invalid(field, f"must be an integer {bounds}")
    return value


def _number(field: str, value) -> float:
    if not (_is_int(value) or isinstance(value, float)):
        raise _invalid(field, "must be a number")
    return float(value)


def _messages(value) -> tuple[dict, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= _MAX_MESSAGES:
        raise _invalid("messages", f"must be a list of 1 to {_MAX_MESSAGES} messages")
    normalised = []
    for index, item in enumerate(value):
        field = f"messages[{index}]"
        if not isinstance(item, dict):
            raise _invalid(field, "must be a map")
        role, content = item.get("role"), item.get("content")
        if not isinstance(role, str) or role not in _ROLES:
            raise _invalid(f"{field}.role", f"must be one of {', '.join(_ROLES)}")
        if not isinstance(content, str):
            raise _invalid(f"{field}.content", "must be a string")
        normalised.append({"role": role, "content": content})
    return tuple(normalised)


def _stops(value) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > _MAX_STOPS:
        raise _invalid("stop", f"must be a list of at most {_MAX_STOPS} strings")
    return tuple(_text(f"stop[{index}]", item, _MAX_STOP_CHARS) for index, item in enumerate(value))


# ---------------------------------------------------------------- frame checks


def _readable_id(message: dict) -> str | None:
    request_id = message.get("id")
    if isinstance(request_id, str) and 1 <= len(request_id) <= _MAX_ID_CHARS:
        return request_id
    return None


def _nesting_exceeds(value, limit: int) -> bool:
    """Whether maps/arrays nest deeper than `limit` levels (iterative: safe on any input)."""
    pending = [(value, 1)]
    while pending:
        container, depth = pending.pop()
        if depth > limit:
            return True
        children = container.values() if isinstance(container, dict) else container
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
