"""The OpenAI-compatible HTTP API as OpenAI clients meet it: a real `mtpchatd` on the tiny models with
`--openai` on a free port, the official `openai` package as the client.

Replies equal the daemon's own for the same greedy request (streamed or not, chat or legacy
completions) and for the same seed, top_p and repetition penalty, stop strings end them, usage and the
`mtp` stats match the daemon's, a client leaving mid-stream cancels its generation, and bad requests,
unknown models, unknown paths and missing keys get OpenAI-shaped errors with the right statuses."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest

from daemon.openai.mapping import wire_error
from mtpchat.client import DaemonClient
from mtpchat.paths import default_endpoint
from tests.helpers import running_daemon, start_daemon_process, wait_until, write_tiny_config

MESSAGES = [{"role": "user", "content": "Hello there"}]
KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny):
    """One daemon with the API for the tests that need no special start: (home, base URL)."""
    home = tmp_path_factory.mktemp("openai") / "h"
    write_tiny_config(home, tiny)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTPCHAT_HOME", str(home))
        with openai_daemon(home) as url:
            yield home, url


@pytest.fixture
def api(shared, monkeypatch):
    home, url = shared
    monkeypatch.setenv("MTPCHAT_HOME", str(home))  # DaemonClient() finds the same daemon
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def openai_daemon(home, *args):
    """The base URL of a running daemon's OpenAI API (`dense` resident)."""
    address = f"127.0.0.1:{free_port()}"
    with running_daemon(home, ["dense"], "--openai", address, *args):
        url = f"http://{address}/v1"
        wait_until(lambda: _answers(url), 30)
        yield url


def _answers(url: str) -> bool:
    try:
        return http(f"{url}/models")[0] in (200, 401)
    except OSError:
        return False


def http(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET, or of a POST when `body` is given: for what the openai package
    will not send."""
    request = urllib.request.Request(url, body, headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def daemon_reply(**fields) -> dict:
    with DaemonClient() as client:
        done = list(client.generate(**{"model": "dense", "messages": MESSAGES, "temperature": 0.0, **fields}))[-1]
    assert done["type"] == "done"
    return done


def test_chat_completion_equals_the_daemons_reply_with_usage_and_mtp_stats(api):
    done = daemon_reply(max_tokens=24)
    response = api.chat.completions.create(model="dense", messages=MESSAGES, temperature=0, max_tokens=24)
    choice = response.choices[0]
    assert choice.message.content == done["text"] and choice.message.role == "assistant"
    assert choice.finish_reason == "length" and response.model == "dense"
    stats = done["stats"]
    assert response.usage.prompt_tokens == stats["prompt_tokens"]
    assert response.usage.completion_tokens == stats["generated_tokens"] == 24
    assert response.usage.total_tokens == stats["prompt_tokens"] + 24
    assert response.usage.prompt_tokens_details.cached_tokens > 0  # the same prompt again: resumed
    mtp = response.model_extra["mtp"]
    for key in ("drafts", "drafted_tokens", "accepted_tokens", "acceptance_rate", "mean_acceptance_length",
                "acceptance_per_position"):
        assert mtp[key] == stats[key], key
    assert mtp["drafts"] > 0  # the tiny dense model drafts 2 tokens per step


def test_streamed_chat_equals_the_daemons_reply(api):
    done = daemon_reply(max_tokens=24)
    chunks = list(api.chat.completions.create(model="dense", messages=MESSAGES, temperature=0, max_tokens=24,
                                              stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == done["text"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert chunks[-1].model_extra["mtp"]["drafted_tokens"] == done["stats"]["drafted_tokens"]
    # without include_usage: no usage chunk
    plain = list(api.chat.completions.create(model="dense", messages=MESSAGES, temperature=0, max_tokens=4,
                                             stream=True))
    assert all(c.choices for c in plain) and all(c.usage is None for c in plain)


def test_seed_top_p_and_a_penalty_reach_the_daemons_generate(api):
    """Over HTTP a reply equals the daemon's own for the same seed and top_p (sampled) and the same
    repetition penalty (greedy); each of them changes the tiny model's reply, so one lost on the way
    (daemon/openai/mapping.py) would show."""
    def direct(**fields) -> str:
        return daemon_reply(max_tokens=12, **fields)["text"]

    def over_http(**fields) -> str:
        extra = {"repetition_penalty": fields.pop("repetition_penalty")} if "repetition_penalty" in fields else None
        response = api.chat.completions.create(model="dense", messages=MESSAGES, max_tokens=12, extra_body=extra,
                                               **fields)
        return response.choices[0].message.content

    sampled = {"temperature": 1.0, "seed": 7, "top_p": 0.5}
    reply = direct(**sampled)
    assert over_http(**sampled) == reply
    assert over_http(**{**sampled, "seed": 8}) == direct(**{**sampled, "seed": 8}) != reply
    assert direct(temperature=1.0, seed=7) != reply  # top_p changed it
    penalized = direct(temperature=0.0, repetition_penalty=2.0)
    assert over_http(temperature=0.0, repetition_penalty=2.0) == penalized != direct(temperature=0.0)


def test_stop_strings_end_the_reply_before_them(api):
    text = daemon_reply(max_tokens=32)["text"]
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip(), f"pick another stop from {text!r}"
    expected = text[:text.index(stop)]
    for given in (stop, [stop, "never in any reply"]):
        response = api.chat.completions.create(model="dense", messages=MESSAGES, temperature=0, max_tokens=32,
                                               stop=given)
        assert response.choices[0].message.content == expected and response.choices[0].finish_reason == "stop"


def test_completions_endpoint_answers_the_prompt_as_one_user_turn(api):
    done = daemon_reply(max_tokens=12)
    response = api.completions.create(model="dense", prompt="Hello there", temperature=0, max_tokens=12)
    assert response.choices[0].text == done["text"] and response.object == "text_completion"
    assert response.usage.completion_tokens == 12
    streamed = api.completions.create(model="dense", prompt="Hello there", temperature=0, max_tokens=12,
                                      stream=True)
    assert "".join(c.choices[0].text for c in streamed) == done["text"]


def test_models_lists_the_daemons_models(api):
    assert {m.id for m in api.models.list()} == {"dense", "moe"}
    assert api.models.retrieve("dense").id == "dense"


def test_a_client_leaving_mid_stream_cancels_the_generation(api):
    seconds_per_token = 1 / daemon_reply(max_tokens=24)["stats"]["decode_tok_s"]
    stream = api.chat.completions.create(model="dense", messages=MESSAGES, temperature=0, max_tokens=4000,
                                         stream=True)
    for index, _ in enumerate(stream):
        if index == 3:
            break
    left = time.monotonic()
    stream.close()
    with DaemonClient() as client:
        wait_until(lambda: client.request("status")["active_streams"] == 0, 30)
    # the ~4000 tokens left would take far longer: the generation stopped because the client left
    assert time.monotonic() - left < 0.5 * 4000 * seconds_per_token
    assert api.chat.completions.create(model="dense", messages=MESSAGES, max_tokens=2).choices[0].message.content


@pytest.mark.parametrize("fields, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": MESSAGES, "temperature": -1}, "temperature"),
    # below the wire's floor (mtpchat.protocol.MIN_REPETITION_PENALTY): the daemon's own check answers
    ({"messages": MESSAGES, "extra_body": {"repetition_penalty": 1e-40}}, "repetition_penalty"),
    ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
    ({"messages": MESSAGES, "n": 2}, "n"),
    ({"messages": MESSAGES, "stop": 3}, "stop"),
    ({"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
])
def test_bad_requests_are_400_naming_the_field(api, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model="dense", **fields)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param
    assert set(caught.value.body) == {"message", "type", "param", "code"}


def test_unknown_model_is_404_and_malformed_bodies_are_400(api, shared):
    with pytest.raises(openai.NotFoundError) as caught:
        api.chat.completions.create(model="nope", messages=MESSAGES)
    assert caught.value.body["code"] == "model_not_found" and "dense" in caught.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model=str(shared[0]), messages=MESSAGES)  # a path: not served over HTTP
    url = f"{str(api.base_url).rstrip('/')}/chat/completions"
    status, body = http(url, b"{not json", {"content-type": "application/json"})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = http(url, b"[]", {"content-type": "application/json"})
    assert status == 400 and "JSON object" in body["error"]["message"]
    # a cross-site form can post text/plain without a CORS preflight: refused
    assert http(url, json.dumps({"messages": MESSAGES}).encode(), {"content-type": "text/plain"})[0] == 400
    host = {"host": "attacker.example:80"}  # DNS rebinding: the page's own name in Host
    assert http(f"{str(api.base_url).rstrip('/')}/models", headers=host)[0] == 403
    status, body = http(f"{str(api.base_url).rstrip('/')}/embeddings", b"{}", {"content-type": "application/json"})
    assert status == 404 and body["error"]["message"] == "no such endpoint: /v1/embeddings"
    status, body = http(url)  # a GET where only POST is served
    assert status == 405 and body["error"]["message"] == "GET is not allowed on /v1/chat/completions"


def test_an_api_key_is_required_when_configured(home, tmp_path):
    key_file = tmp_path / "openai.key"
    key_file.write_text(KEY + "\n")
    with openai_daemon(home, "--openai-api-key-file", str(key_file)) as url:
        with pytest.raises(openai.AuthenticationError) as caught:
            openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0).models.list()
        assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
        for headers in ({}, {"authorization": f"Basic {KEY}"}, {"authorization": "Bearer"}):
            status, body = http(f"{url}/models", headers=headers)
            assert status == 401 and body["error"]["code"] == "invalid_api_key"
        api = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        assert api.chat.completions.create(model="dense", messages=MESSAGES, max_tokens=2).choices[0].message.content


def test_a_non_loopback_address_without_a_key_stops_the_start(home):
    process = start_daemon_process(home, "--openai", f"0.0.0.0:{free_port()}")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1 and "api_key_file" in output


def test_the_api_alone_serves_a_daemon_running_elsewhere(home, tmp_path):
    """`mtpchatd openai --connect ENDPOINT` in another home (whose own daemon does not exist) answers for
    the daemon at ENDPOINT, with that daemon's replies; SIGTERM stops it cleanly."""
    address = f"127.0.0.1:{free_port()}"
    with running_daemon(home, ["dense"]):
        direct = daemon_reply(max_tokens=6)["text"]
        env = dict(os.environ, MTPCHAT_HOME=str(tmp_path / "elsewhere"))
        gateway = subprocess.Popen([sys.executable, "-m", "daemon", "openai", "--connect", default_endpoint(),
                                    "--listen", address], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        try:
            url = f"http://{address}/v1"
            wait_until(lambda: _answers(url), 30)
            api = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
            assert "dense" in [model.id for model in api.models.list()]
            reply = api.chat.completions.create(model="dense", messages=MESSAGES, max_tokens=6, temperature=0)
            assert reply.choices[0].message.content == direct
        finally:
            gateway.terminate()
            output, _ = gateway.communicate(timeout=30)
        assert gateway.returncode == 0, output


@pytest.mark.parametrize("code, status", [("busy", 429), ("unknown_model", 404), ("prompt_too_long", 400),
                                          ("model_not_ready", 503), ("shutdown", 503), ("internal", 500)])
def test_daemon_errors_map_to_http_statuses(code, status):
    error = wire_error({"type": "error", "code": code, "message": "m"})
    assert error.status == status and set(error.body()["error"]) == {"message", "type", "param", "code"}
