"""The command line as a user runs it: real processes, the default demo model, JSON out; and `ask`'s
reply length against a stand-in daemon client."""

import io
import json
import os
import subprocess
import sys

import pytest
import torch

from daemon.engine.sampling import SamplingParams
from daemon.weights.loader import load_model
from mtpchat import cli
from mtpchat.client import ANSWERING, DaemonUnavailable
from tests.helpers import chat_prompt, decode


def _run(*args, home, stdin=None):
    env = dict(os.environ, MTPCHAT_HOME=str(home))
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=120,
                          input=stdin)


@pytest.fixture
def home(tmp_path, demo):
    """A home whose daemon (started by the commands under test) is stopped afterwards. Its cache holds the
    demo checkpoint converted once per session (linked), as a second start on one machine finds it."""
    checkpoints = tmp_path / "cache" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / demo.name).symlink_to(demo)
    yield tmp_path
    stopped = _run("mtpchat.cli", "daemon", "stop", home=tmp_path)
    assert stopped.returncode == 0, stopped.stderr


def test_ask_json_is_the_engines_greedy_reply(tiny, home):
    ckpt = tiny["qwen3.6-moe-tiny"]
    model = load_model(ckpt, device="cpu")
    stop = set(model.config.eos_token_ids)
    expected = decode(model, chat_prompt(ckpt, "Hello there"), 12, stop)
    stopped = expected[-1] in stop
    for flags in (["--no-mtp"], ["--draft", "3"], ["--draft", "auto"]):
        done = _run("mtpchat.cli", "ask", "-", "--model", str(ckpt), "--max-tokens", "12", "--json", "--temperature",
                    "0", *flags, home=home, stdin="Hello there")
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        assert reply["token_ids"] == (expected[:-1] if stopped else expected)
        assert reply["finish_reason"] == ("stop" if stopped else "length")
        assert reply["stats"]["prompt_tokens"] == len(chat_prompt(ckpt, "Hello there"))
        assert reply["stats"]["draft_k"] == {"--no-mtp": 0, "3": 3, "auto": 4}[flags[-1]]
        assert reply["text"]
    penalised = SamplingParams(repetition_penalty=1.3, presence_penalty=0.8, frequency_penalty=0.4, min_p=0.1)
    expected = decode(model, chat_prompt(ckpt, "Hello there"), 12, stop, sampling=penalised)
    done = _run("mtpchat.cli", "ask", "-", "--model", str(ckpt), "--max-tokens", "12", "--json", "--temperature", "0",
                "--repetition-penalty", "1.3", "--presence-penalty", "0.8", "--frequency-penalty", "0.4",
                "--min-p", "0.1", "--draft", "3", home=home, stdin="Hello there")
    assert json.loads(done.stdout)["token_ids"] == [t for t in expected if t not in stop]


def test_ask_streams_text_with_the_default_demo_model(home):
    greedy = ["--max-tokens", "12", "--temperature", "0"]  # the demo samples by default: greedy repeats itself
    done = _run("mtpchat.cli", "ask", "What is the capital of France?", *greedy, home=home)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    told = "the reply stopped at the --max-tokens limit (12 tokens)" in done.stderr
    done = _run("mtpchat.cli", "ask", "What is the capital of France?", *greedy, "--json", home=home)
    assert told == (json.loads(done.stdout)["finish_reason"] == "length")
    stats = json.loads(done.stdout)["stats"]
    assert stats["draft_k"] == 4 and stats["drafts"] > 0  # MTP-decoded (adaptive k up to 4), with the trained head
    status = json.loads(_run("mtpchat.cli", "daemon", "status", "--json", home=home).stdout)
    assert status["running"] and status["models"][0]["name"] == "demo"
    assert status["models"][0]["state"] == "resident" and status["active_streams"] == 0
    listed = _run("mtpchat.cli", "models", home=home).stdout
    assert "demo" in listed and "resident" in listed
    unloaded = _run("mtpchat.cli", "models", "unload", "demo", home=home)
    assert unloaded.returncode == 0 and unloaded.stdout == "demo unloaded\n"
    demo_line = [line for line in _run("mtpchat.cli", "models", "list", home=home).stdout.splitlines()
                 if "demo" in line]
    assert "unloaded" in demo_line[0]
    loaded = _run("mtpchat.cli", "models", "load", "demo", home=home)
    assert loaded.returncode == 0 and loaded.stdout == "demo resident\n" and "loading demo…" in loaded.stderr


def test_ask_with_a_missing_checkpoint_fails_clearly(home):
    done = _run("mtpchat.cli", "ask", "hi", "--model", str(home / "nope"), home=home)
    assert done.returncode == 1
    assert "checkpoint" in done.stderr and "not found" in done.stderr
    assert "Traceback" not in done.stderr


def test_daemon_start_status_stop(home):
    assert _run("mtpchat.cli", "daemon", "status", home=home).returncode == 3
    started = _run("mtpchat.cli", "daemon", "start", home=home)
    assert started.returncode == 0 and started.stdout.startswith("mtpchatd started (pid ")
    again = _run("mtpchat.cli", "daemon", "start", home=home)
    assert again.returncode == 0 and again.stdout.startswith("mtpchatd was already running (pid ")
    status = _run("mtpchat.cli", "daemon", "status", home=home)
    assert status.returncode == 0 and "demo" in status.stdout
    stopped = _run("mtpchat.cli", "daemon", "stop", home=home)
    assert stopped.returncode == 0 and stopped.stdout.startswith("mtpchatd (pid ") and "stopped" in stopped.stdout
    assert _run("mtpchat.cli", "daemon", "status", home=home).returncode == 3


class StandInClient:
    """A daemon client that answers `models` with `models` and every generate with one chunk and a done."""

    def __init__(self, models: list[dict], finish_reason: str):
        self.models, self.finish_reason, self.generated = models, finish_reason, []

    def __call__(self, endpoint=None):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def request(self, op, **fields):
        return {"type": "models", "models": self.models}

    def generate(self, **fields):
        self.generated.append(fields)
        yield {"type": "chunk", "text": "The sea is"}
        yield {"type": "done", "text": "The sea is", "finish_reason": self.finish_reason}


@pytest.mark.parametrize("models, finish_reason, max_tokens, told", [
    ([{"name": "demo", "default": True, "context": 8192}], "context", 8192, "the model's context is full"),
    ([{"name": "demo", "default": True}], "length", cli.ASK_MAX_TOKENS,  # not placed yet: no context reported
     f"the reply stopped at the --max-tokens limit ({cli.ASK_MAX_TOKENS} tokens)"),
    ([{"name": "demo", "default": True, "context": 8192}], "stop", 8192, None),
])
def test_ask_replies_as_long_as_the_context_allows_and_says_when_it_stopped_short(
        models, finish_reason, max_tokens, told, monkeypatch, capsys):
    client = StandInClient(models, finish_reason)
    monkeypatch.setattr(cli, "DaemonClient", client)
    monkeypatch.setattr(cli, "_ensure_daemon", lambda args: None)
    assert cli.main(["ask", "Tell me about the sea"]) == 0
    out, err = capsys.readouterr()
    assert client.generated[0]["max_tokens"] == max_tokens and out == "The sea is\n"
    assert (told in err) if told else err == ""
    assert "default: as many as the model's context leaves, or 4096" in " ".join(cli_help(capsys).split())


@pytest.mark.parametrize("argv, stdin", [(["ask", ""], ""), (["ask", " \n\t"], ""), (["ask", "-"], "\n  \n")])
def test_ask_refuses_an_empty_prompt_before_reaching_the_daemon(argv, stdin, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_ensure_daemon", lambda args: pytest.fail("an empty prompt reached the daemon"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "mtpchat: the prompt is empty; nothing to ask\n"


def cli_help(capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main(["ask", "--help"])
    return capsys.readouterr().out


def test_mtpchatd_inspect_reports_the_checkpoint(tiny, tmp_path):
    done = _run("daemon", "inspect", str(tiny["qwen3.5-moe-tiny"]), "--device", "cpu", home=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model_type"] == "qwen3_5_moe_text" and report["mtp_head"] is True
    assert report["layers"] == 8 and report["full_attention_layers"] == 2 and report["dtype"] == "float32"
    done = _run("daemon", "inspect", str(tiny["qwen3.5-moe-tiny"]), "--device", "cpu", "--dtype", "bfloat16",
                home=tmp_path)
    assert json.loads(done.stdout)["dtype"] == "bfloat16"


def test_client_side_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import mtpchat, mtpchat.cli, mtpchat.paths, mtpchat.client, mtpchat.protocol, mtpchat.config\n"
            "import mtpchat.store, mtpchat.tui.app\n"
            "loaded = [m for m in sys.modules if m.split('.')[0] == 'daemon']\n"
            "assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_bench_and_train_head_are_handed_to_mtpchatd(tmp_path):
    for command in ("bench", "train-head"):
        done = _run("mtpchat.cli", command, "--help", home=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: mtpchatd {command}")


def test_engine_commands_without_the_engine_say_what_to_install():
    code = "import sys; sys.modules['torch'] = None\nfrom mtpchat.cli import main\nsys.exit(main(['bench']))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "install mtpchat[daemon]" in done.stderr


@torch.inference_mode()
def test_generation_stops_at_stop_tokens_and_max_tokens(tiny):
    model = load_model(tiny["qwen3.6-dense-tiny"], device="cpu")
    prompt = chat_prompt(tiny["qwen3.6-dense-tiny"], "Count to ten")
    free = decode(model, prompt, 20)
    assert len(free) == 20
    stopped = decode(model, prompt, 20, stop_ids={free[5]})
    assert stopped == free[:free.index(free[5]) + 1]
    assert decode(model, prompt, 0) == []
    with pytest.raises(ValueError, match="prompt is empty"):
        decode(model, [], 5)
    with pytest.raises(ValueError, match="context is 4096"):
        decode(model, [1] * 4096, 5)


class StatusClient(StandInClient):
    """A daemon client whose daemon answers hello but `status` with `answer`, or dies on it (answer None)."""

    def __init__(self, answer: dict | None):
        super().__init__([], "stop")
        self.answer = answer

    def request(self, op, **fields):
        if self.answer is None:
            raise DaemonUnavailable("mtpchatd died mid-reply (see its log)")
        return {"v": 1, "id": "r1", **self.answer}


@pytest.mark.parametrize("flags", [[], ["--json"]])
@pytest.mark.parametrize("answer, told", [
    ({"type": "error", "code": "shutdown", "message": "mtpchatd is shutting down"},
     "mtpchatd runs but could not report its status: mtpchatd is shutting down (shutdown); its log may say more"),
    (None, "mtpchat: mtpchatd died mid-reply (see its log)"),
])
def test_daemon_status_says_what_went_wrong_when_the_daemon_cannot_answer(answer, told, flags, monkeypatch, capsys):
    monkeypatch.setattr(cli, "DaemonClient", StatusClient(answer))
    monkeypatch.setattr(cli, "daemon_liveness", lambda endpoint, timeout_s: ANSWERING)
    assert cli.main(["daemon", "status", *flags]) == 1
    out, err = capsys.readouterr()
    assert out == "" and told in err and "Traceback" not in err  # stdout holds a status or nothing
