"""A model served by another engine over the OpenAI API (`engine = "openai"`), end to end: one mtpchatd
serves /v1 on the tiny models, a second registers it as a remote model and streams from it.

The reply through the pair equals the first daemon's own reply; the acceptance figures are the remote's
(reported in its `mtp` field), not made up; a cancel on the second daemon ends the generation on the
first well before it would end by itself; the remote's refusals become wire errors."""

from __future__ import annotations

import contextlib
import math
import time

import pytest

from daemon.serve.remote_engine import remote_error, remote_stats
from mtpchat.client import DaemonClient
from tests.helpers import running_daemon, wait_until, write_tiny_config
from tests.test_openai_api import MESSAGES, free_port, openai_daemon


@contextlib.contextmanager
def home_env(home):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTPCHAT_HOME", str(home))
        yield


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny):
    """(home of the daemon serving /v1, home of the daemon using it as `remote`)."""
    server, front = tmp_path_factory.mktemp("server") / "h", tmp_path_factory.mktemp("front") / "h"
    write_tiny_config(server, tiny)
    (front / "config").mkdir(parents=True)
    with home_env(server), openai_daemon(server) as url:
        (front / "config" / "config.toml").write_text(
            f'default = "remote"\n[models.remote]\nengine = "openai"\nurl = "{url}"\nmodel = "dense"\n'
            f'[models.missing]\nengine = "openai"\nurl = "{url}"\nmodel = "nope"\n'
            f'[models.down]\nengine = "openai"\nurl = "http://127.0.0.1:{free_port()}/v1"\nmodel = "x"\n')
        with home_env(front), running_daemon(front, ["remote"]):
            yield server, front


def generate(home, **fields) -> list[dict]:
    with home_env(home), DaemonClient() as client:
        return list(client.generate(**{"messages": MESSAGES, "temperature": 0.0, **fields}))


def test_a_reply_through_the_pair_equals_the_direct_reply(pair):
    server, front = pair
    direct = generate(server, model="dense", max_tokens=24)[-1]
    replies = generate(front, model="remote", max_tokens=24)
    done = replies[-1]
    assert done["type"] == "done" and done["text"] == direct["text"]
    assert "".join(r["text"] for r in replies[:-1]) == done["text"]
    assert done["finish_reason"] == "length" and done["token_ids"] == []  # the OpenAI API gives no ids
    stats, theirs = done["stats"], direct["stats"]
    assert stats["generated_tokens"] == 24 and stats["prompt_tokens"] == theirs["prompt_tokens"]
    for key in ("drafts", "drafted_tokens", "accepted_tokens", "acceptance_rate", "acceptance_per_position"):
        assert stats[key] == theirs[key], key  # the remote's own figures, as it reported them
    assert stats["time_to_first_token_s"] > 0
    with home_env(front), DaemonClient() as client:
        remote = {m["name"]: m for m in client.request("models")["models"]}["remote"]
    assert remote["state"] == "resident" and remote["engine"] == "openai" and remote["remote_model"] == "dense"


def test_a_cancel_on_the_front_ends_the_remote_generation_early(pair):
    """The same greedy request left alone keeps the remote busy for `whole_s` (about 3 s of decoding, or
    until the reply ends); cancelled on the front after its first chunk, the remote is idle in under half
    that, so the cancel stopped it, not the reply's end."""
    server, front = pair
    seconds_per_token = 1 / generate(server, model="dense", max_tokens=24)[-1]["stats"]["decode_tok_s"]
    tokens = min(4000, max(48, math.ceil(3.0 / seconds_per_token)))
    started = time.monotonic()
    generate(server, model="dense", max_tokens=tokens)
    whole_s = time.monotonic() - started
    with home_env(front), DaemonClient() as client:
        replies = client.generate(model="remote", messages=MESSAGES, temperature=0.0, max_tokens=tokens)
        assert next(replies)["type"] == "chunk"
        replies.close()  # leaving the loop sends the cancel
        cancelled = time.monotonic()
        with home_env(server), DaemonClient() as remote:
            wait_until(lambda: remote.request("status")["active_streams"] == 0, whole_s)
        assert time.monotonic() - cancelled < 0.5 * whole_s
        wait_until(lambda: client.request("status")["active_streams"] == 0, 10)


@pytest.mark.parametrize("model, code", [("missing", "model_not_ready"), ("down", "model_not_ready")])
def test_remote_refusals_are_wire_errors(pair, model, code):
    error = generate(pair[1], model=model, max_tokens=4)[-1]
    assert error["type"] == "error" and error["code"] == code and model in error["message"]


def test_llama_server_timings_give_acceptance_and_nothing_is_invented():
    stats = remote_stats({"timings": {"draft_n": 40, "draft_n_accepted": 30, "predicted_per_second": 50.0}})
    assert stats == {"drafted_tokens": 40, "accepted_tokens": 30, "acceptance_rate": 0.75, "decode_tok_s": 50.0}
    assert remote_stats({"choices": [{"delta": {"content": "x"}}]}) == {}
    assert remote_error("m", 429, b'{"error": {"message": "slow down"}}').code == "busy"
    assert remote_error("m", 400, b'{"error": {"code": "context_length_exceeded"}}').code == "prompt_too_long"
    llama_server = b'{"error": {"code": 400, "type": "exceed_context_size_error", "message": "too long"}}'
    assert remote_error("m", 400, llama_server).code == "prompt_too_long"
    assert remote_error("m", 500, b"<html>oops").code == "internal"
