"""The wire protocol (mtpchat/protocol.py, spec in docs/protocol.md): framing, versioning, request
validation, and that no byte string makes it raise anything but ProtocolError."""

from __future__ import annotations

import math
import random
import time

import msgpack
import pytest

from mtpchat.protocol import (
    DRAFT_AUTO,
    DRAFT_CHOICES,
    MAX_DRAFT,
    MAX_FRAME_BYTES,
    MAX_NESTING,
    MAX_REPETITION_PENALTY,
    MIN_REPETITION_PENALTY,
    OPS,
    SAMPLING_BOUNDS,
    TERMINAL,
    VERSION,
    CancelRequest,
    GenerateRequest,
    HelloRequest,
    LoadRequest,
    ModelsRequest,
    ProtocolError,
    StatusRequest,
    UnloadRequest,
    error_reply,
    pack,
    parse_request,
    reply,
    sampling_fields,
    unpack,
)

USER = [{"role": "user", "content": "hi"}]
MISSING = object()  # a parameter value meaning "leave the field out"


def request(op, **fields) -> dict:
    message = {"v": VERSION, "id": "r1", "op": op, **fields}
    return {key: value for key, value in message.items() if value is not MISSING}


def generate(**fields) -> dict:
    return request("generate", **{"messages": USER, **fields})


def raises(code: str, call, *args) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        call(*args)
    assert info.value.code == code, info.value
    return info.value


# ---------------------------------------------------------------- round trips


def test_pack_adds_version_without_touching_the_message():
    message = {"id": "r1", "op": "status"}
    assert unpack(pack(message)) == {"v": VERSION, "id": "r1", "op": "status"}
    assert message == {"id": "r1", "op": "status"}


def test_pack_keeps_an_explicit_version():
    frame = pack({"v": 7, "id": "r1", "op": "status"})
    assert msgpack.unpackb(frame)["v"] == 7
    raises("unsupported_version", unpack, frame)


def test_request_round_trip_through_parse():
    sampling = dict(temperature=0.7, top_p=0.9, top_k=20, min_p=0.05, repetition_penalty=1.1, presence_penalty=1.5,
                    frequency_penalty=-0.5)
    sent = generate(model="qwen-dense", system="Be brief.", max_tokens=64, **sampling, seed=3, draft=2, thinking=False,
                    stop=["\n\n"])
    parsed = parse_request(unpack(pack(sent)))
    assert parsed == GenerateRequest("r1", messages=tuple(USER), model="qwen-dense", system="Be brief.",
                                     max_tokens=64, **sampling, seed=3, draft=2, thinking=False, stop=("\n\n",))
    assert parsed.sampling == sampling


def test_reply_round_trip_keeps_types():
    chunk = reply("r1", "chunk", text="héllo ✓", tokens=[1, 248319], drafted=[True, False],
                  stats={"acceptance_rate": 0.5, "accepted_per_position": [3, 1]}, raw=b"\x00\xff")
    assert chunk["v"] == VERSION and chunk["id"] == "r1" and chunk["type"] == "chunk"
    assert unpack(pack(chunk)) == chunk


def test_error_reply():
    assert error_reply(None, "malformed_frame", "bad") == {
        "v": VERSION, "id": None, "type": "error", "code": "malformed_frame", "message": "bad"}
    assert unpack(pack(error_reply("r9", "busy", "later")))["id"] == "r9"
    assert "error" in TERMINAL and "done" in TERMINAL and "cancelled" in TERMINAL


# ---------------------------------------------------------------- frames


def padded_frame(size: int) -> bytes:
    """A valid frame of exactly `size` bytes (size well above 64 KiB)."""
    overhead = len(msgpack.packb(request("status", pad="a" * 70_000))) - 70_000
    return msgpack.packb(request("status", pad="a" * (size - overhead)))


def test_frame_at_the_limit_is_accepted_and_one_byte_more_refused():
    frame = padded_frame(MAX_FRAME_BYTES)
    assert len(frame) == MAX_FRAME_BYTES
    assert unpack(frame)["op"] == "status"
    raises("frame_too_large", unpack, padded_frame(MAX_FRAME_BYTES + 1))


def test_size_is_checked_before_decoding():
    raises("frame_too_large", unpack, b"\xc1" * (MAX_FRAME_BYTES + 1))


def test_pack_refuses_a_frame_the_other_side_would_refuse():
    raises("frame_too_large", pack, {"id": "r1", "type": "done", "text": "a" * MAX_FRAME_BYTES})


@pytest.mark.parametrize("value", [None, 1, 1.5, "map", b"map", [1, 2], [{"v": 1}], True])
def test_non_map_frames_are_malformed(value):
    raises("malformed_frame", unpack, msgpack.packb(value))


@pytest.mark.parametrize("frame", [
    b"",
    b"\xc1",  # never-used type byte
    msgpack.packb({"v": 1}) + msgpack.packb({"v": 1}),  # two values in one frame
    b"\x81\xa1v\xa2\xff\xfe",  # invalid UTF-8 in a str
    b"\x81\x01\x01",  # int map key
    b"\x81\x90\x01",  # array map key
    b"\xdd\xff\xff\xff\xff",  # array header claiming 4 G items
    msgpack.packb({"v": 1, "at": msgpack.Timestamp(1, 0)}, datetime=False),
    msgpack.packb({"v": 1, "x": msgpack.ExtType(5, b"ab")}),
])
def test_undecodable_frames_are_malformed(frame):
    raises("malformed_frame", unpack, frame)


def test_every_truncation_of_a_valid_frame_is_malformed():
    frame = pack(generate(stop=["x"], seed=2**40, temperature=0.5))
    for cut in range(len(frame)):
        raises("malformed_frame", unpack, frame[:cut])


def nested(depth: int) -> dict:
    """A message whose maps/arrays nest `depth` levels, the top map included."""
    value = []
    for _ in range(depth - 2):
        value = [value]
    return {"v": VERSION, "id": "r1", "op": "status", "deep": value}


def test_nesting_limit():
    assert unpack(msgpack.packb(nested(MAX_NESTING)))["op"] == "status"
    raises("malformed_frame", unpack, msgpack.packb(nested(MAX_NESTING + 1)))


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 1000, 1100, 5000])
def test_over_deep_nesting_says_so_whatever_the_depth(depth):
    """Past ~1024 levels msgpack's own stack limit trips first, with an empty message."""
    frame = b"\x81\xa1v" + b"\x91" * depth + b"\x01"
    with pytest.raises(ProtocolError, match=f"nested deeper than {MAX_NESTING} levels") as caught:
        unpack(frame)
    assert caught.value.code == "malformed_frame"


# ---------------------------------------------------------------- versions


@pytest.mark.parametrize("version", [MISSING, None, "1", 1.0, True, [1]])
def test_missing_or_non_integer_version_is_malformed(version):
    raises("malformed_frame", unpack, msgpack.packb(request("status", v=version)))


@pytest.mark.parametrize("version", [0, 2, -1, 2**64 - 1])
def test_other_versions_are_unsupported_and_keep_the_id(version):
    error = raises("unsupported_version", unpack, msgpack.packb({"v": version, "id": "r7", "op": "status"}))
    assert error.request_id == "r7"
    assert raises("unsupported_version", unpack, msgpack.packb({"v": version})).request_id is None


# ---------------------------------------------------------------- requests: envelope


@pytest.mark.parametrize("request_id", [MISSING, None, "", "x" * 65, 5, True, ["r1"], b"r1"])
def test_bad_id(request_id):
    error = raises("invalid_request", parse_request, request("status", id=request_id))
    assert error.message.startswith("id:") and error.request_id is None


def test_id_limits():
    assert parse_request(request("status", id="x")).id == "x"
    assert parse_request(request("status", id="x" * 64)).id == "x" * 64


@pytest.mark.parametrize("op", [MISSING, None, 3, ["status"], b"status"])
def test_missing_or_non_string_op_is_invalid(op):
    error = raises("invalid_request", parse_request, request(op))
    assert error.message.startswith("op:") and error.request_id == "r1"


@pytest.mark.parametrize("op", ["", "Status", "shutdown", "x" * 10_000])
def test_unknown_op(op):
    error = raises("unknown_op", parse_request, request(op))
    assert error.request_id == "r1" and len(error.message) < 300


# ---------------------------------------------------------------- requests: defaults


def test_each_op_parses_to_its_typed_request_with_defaults():
    assert parse_request(request("hello")) == HelloRequest("r1", client="")
    assert parse_request(request("hello", client="tui 1.0")).client == "tui 1.0"
    assert parse_request(request("status")) == StatusRequest("r1")
    assert parse_request(request("models")) == ModelsRequest("r1")
    assert parse_request(request("load", model="qwen-moe")) == LoadRequest("r1", "qwen-moe")
    assert parse_request(request("unload", model="m")) == UnloadRequest("r1", "m")
    assert parse_request(request("cancel", target="r0")) == CancelRequest("r1", "r0")
    for cls in (HelloRequest, StatusRequest, ModelsRequest, LoadRequest, UnloadRequest, CancelRequest,
                GenerateRequest):
        assert type(parse_request(request(cls.op, model="m", target="t", messages=USER))) is cls


def test_generate_defaults():
    parsed = parse_request(generate())
    assert parsed == GenerateRequest("r1", messages=tuple(USER), model=None, system=None, max_tokens=512,
                                     temperature=None, top_p=None, top_k=None, min_p=None, repetition_penalty=None,
                                     presence_penalty=None, frequency_penalty=None, seed=None, draft=None,
                                     thinking=True, stop=())
    assert parsed.op == "generate"
    assert parsed.draft is None  # left out: the daemon applies the model's configured draft setting
    assert parsed.sampling == {}  # left out: the daemon applies the model's sampling defaults
    assert parse_request(generate(temperature=0)).sampling == {"temperature": 0.0}  # greedy, explicitly


def test_parse_returns_a_new_normalised_request():
    messages = [{"role": "user", "content": "hi", "name": "ignored"}]
    message = request("generate", messages=messages, stop=["a"], extra={"x": 1}, temperature=1, top_p=1,
                      repetition_penalty=2)
    parsed = parse_request(message)
    assert parsed.messages == ({"role": "user", "content": "hi"},)
    assert not hasattr(parsed, "extra") and not hasattr(parsed, "v")
    assert parsed.temperature == 1.0 and isinstance(parsed.temperature, float)
    assert isinstance(parsed.top_p, float) and isinstance(parsed.repetition_penalty, float)
    parsed.messages[0]["content"] = "changed"
    assert messages[0]["content"] == "hi" and parsed.stop == ("a",)
    with pytest.raises(AttributeError):
        parsed.max_tokens = 1  # frozen: what was validated stays valid


@pytest.mark.parametrize("field, value", [
    ("model", "m" * 512), ("model", None), ("system", ""), ("system", None),
    ("messages", [{"role": role, "content": ""} for role in ("system", "user", "assistant")]),
    ("messages", USER * 1000),
    ("max_tokens", 1), ("max_tokens", 1_000_000),
    ("temperature", 0), ("temperature", 100), ("temperature", 0.25),
    ("top_p", 1), ("top_p", 1e-9), ("top_k", 0), ("top_k", 50), ("min_p", 0), ("min_p", 1), ("min_p", 0.05),
    ("repetition_penalty", MIN_REPETITION_PENALTY), ("repetition_penalty", 1),
    ("repetition_penalty", MAX_REPETITION_PENALTY),
    ("presence_penalty", -2), ("presence_penalty", 2), ("frequency_penalty", -2), ("frequency_penalty", 2),
    ("seed", 0), ("seed", -5), ("seed", 2**64 - 1),
    ("draft", 0), ("draft", MAX_DRAFT), ("draft", DRAFT_AUTO), ("thinking", False),
    ("quantize", "none"), ("quantize", "int8"), ("quantize", "int4"),
    ("stop", []), ("stop", ["s" * 256] * 16),
])
def test_generate_accepts_edge_values(field, value):
    parsed = getattr(parse_request(generate(**{field: value})), field)
    assert parsed == (tuple(value) if isinstance(value, list) else value)


def test_draft_choices_are_what_the_wire_accepts():
    assert DRAFT_CHOICES == (*range(MAX_DRAFT + 1), DRAFT_AUTO)
    for draft in DRAFT_CHOICES:
        assert parse_request(generate(draft=draft)).draft == draft


# ---------------------------------------------------------------- requests: validation


BAD_FIELDS = [
    # (op, field named in the error, fields sent)
    ("hello", "client", {"client": 1}),
    ("hello", "client", {"client": None}),
    *[(op, "model", fields) for op in ("load", "unload") for fields in (
        {}, {"model": ""}, {"model": "m" * 513}, {"model": None}, {"model": 1}, {"model": ["m"]})],
    *[("cancel", "target", fields) for fields in (
        {}, {"target": ""}, {"target": "t" * 65}, {"target": 1}, {"target": None})],
    ("generate", "model", {"messages": USER, "model": ""}),
    ("generate", "model", {"messages": USER, "model": "m" * 513}),
    ("generate", "model", {"messages": USER, "model": 3}),
    ("generate", "messages", {}),
    ("generate", "messages", {"messages": None}),
    ("generate", "messages", {"messages": []}),
    ("generate", "messages", {"messages": USER * 1001}),
    ("generate", "messages", {"messages": {"role": "user", "content": "hi"}}),
    ("generate", "messages[0]", {"messages": ["hi"]}),
    ("generate", "messages[1]", {"messages": USER + [None]}),
    ("generate", "messages[0].role", {"messages": [{"content": "hi"}]}),
    ("generate", "messages[0].role", {"messages": [{"role": "tool", "content": "hi"}]}),
    ("generate", "messages[0].role", {"messages": [{"role": ["user"], "content": "hi"}]}),
    ("generate", "messages[0].content", {"messages": [{"role": "user"}]}),
    ("generate", "messages[0].content", {"messages": [{"role": "user", "content": None}]}),
    ("generate", "messages[0].content", {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}),
    *[("generate", field, {"messages": USER, field: value}) for field, values in {
        "system": [1, ["s"], b"s"],
        "max_tokens": [0, -1, 1_000_001, 1.0, "512", None, True],
        "temperature": [-0.1, 100.5, float("nan"), float("inf"), "0", None, True, False],
        "top_p": [0, 0.0, -1, 1.01, float("nan"), "1", None, True],
        "top_k": [-1, 1.0, "0", None, True, False],
        "min_p": [-0.1, 1.01, float("nan"), float("inf"), "0", None, True],
        "repetition_penalty": [0, -1, 1e-300, 1e-40, 0.09, 10.5, float("nan"), float("inf"), "1", None, True],
        "presence_penalty": [-2.1, 2.1, float("nan"), float("-inf"), "0", None, True],
        "frequency_penalty": [-2.1, 2.1, float("nan"), float("inf"), "0", None, True],
        "seed": [1.0, "1", True, [1]],
        "draft": [-1, MAX_DRAFT + 1, 2.0, "2", "AUTO", None, True, False],
        "thinking": [1, 0, "true", None],
        "quantize": ["int3", "INT8", 8, True],
        "stop": ["\n", None, {"a": 1}, ["s"] * 17],
    }.items() for value in values],
    *[("generate", "stop[0]", {"messages": USER, "stop": value}) for value in ([""], ["s" * 257], [1], [None])],
    ("generate", "stop[1]", {"messages": USER, "stop": ["ok", ""]}),
]


@pytest.mark.parametrize("op, field, fields", BAD_FIELDS)
def test_bad_field_is_an_invalid_request_naming_it(op, field, fields):
    error = raises("invalid_request", parse_request, request(op, **fields))
    assert error.message.startswith(f"{field}: "), error.message
    assert error.request_id == "r1"


def test_repetition_penalty_below_its_floor_is_refused_with_the_range():
    """A tiny penalty once scaled logits to inf and sampling to NaN: the protocol refuses it, saying what it
    accepts, and a generate request gets the same answer as a config file's sampling table."""
    assert MIN_REPETITION_PENALTY == 1 / MAX_REPETITION_PENALTY == 0.1
    for value in (1e-40, 1e-300, 0.0999):
        for call, arg in ((parse_request, generate(repetition_penalty=value)),
                          (sampling_fields, {"repetition_penalty": value})):
            error = raises("invalid_request", call, arg)
            assert error.message == "repetition_penalty: must be at least 0.1 and at most 10"


def accepted_ends(bounds) -> tuple:
    """The lowest and highest value a field accepts (the largest msgpack integer where there is no limit)."""
    low = math.nextafter(bounds.low, math.inf) if bounds.low_open else bounds.low
    return low, 2**64 - 1 if bounds.high is None else bounds.high


@pytest.mark.parametrize("field", list(SAMPLING_BOUNDS))
def test_each_sampling_field_accepts_its_ends_and_refuses_just_beyond(field):
    bounds = SAMPLING_BOUNDS[field]
    low, high = accepted_ends(bounds)
    for value in (low, high):
        assert getattr(parse_request(generate(**{field: value})), field) == value
    step = 1 if bounds.integer else 1e-9  # far above float64 spacing at these magnitudes (<= 100)
    beyond = [bounds.low if bounds.low_open else bounds.low - step]
    if bounds.high is not None:
        beyond.append(bounds.high + step)
    for value in beyond:
        error = raises("invalid_request", parse_request, generate(**{field: value}))
        assert error.message.startswith(f"{field}: must be"), error.message


@pytest.mark.parametrize("field", ["max_tokens", "top_k", "seed", "draft", "temperature", "top_p", "min_p",
                                   "repetition_penalty", "presence_penalty", "frequency_penalty"])
@pytest.mark.parametrize("value", [True, False])
def test_bools_are_not_numbers(field, value):
    error = raises("invalid_request", parse_request, generate(**{field: value}))
    assert error.message.startswith(f"{field}: ")


def test_the_ops_are_the_documented_ones():
    assert OPS == ("hello", "status", "models", "load", "unload", "generate", "cancel")


# ---------------------------------------------------------------- fuzz


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.6:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        elif choice < 0.8 and data:
            del data[rng.randrange(len(data))]
        else:
            data = data[:rng.randrange(len(data) + 1)]
    return bytes(data)


def test_fuzz_only_protocol_errors():
    rng = random.Random(20240611)
    seeds = [pack(generate(model="m", system="s", stop=["x", "y"], seed=9, draft=3, top_p=0.5)),
             pack(request("hello", client="c")), pack(request("cancel", target="r0")),
             pack(request("load", model="qwen")), pack(reply("r1", "chunk", text="t", tokens=[1, 2]))]
    outcomes = {"ok": 0}
    started = time.perf_counter()
    for i in range(4000):
        if i % 4 == 0:
            frame = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        else:
            frame = mutate(rng, rng.choice(seeds))
        try:
            parse_request(unpack(frame))
            outcomes["ok"] += 1
        except ProtocolError as error:
            outcomes[error.code] = outcomes.get(error.code, 0) + 1
    assert time.perf_counter() - started < 3.0
    # the corpus reaches every layer: decoding, version check, and request validation
    assert {"ok", "malformed_frame", "invalid_request"} <= set(outcomes), outcomes
