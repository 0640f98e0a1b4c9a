"""TUI parts without a screen: thinking split, stats lines, the reply feed, model states, the TUI's
part of config.toml and themes, the ssh tunnel's command lines (with a stand-in `ssh` on PATH)."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from mtpchat.cli import _model_line
from mtpchat.config import load_config, save_theme
from mtpchat.paths import config_dir
from mtpchat.status_text import model_state
from mtpchat.tui import ssh_tunnel
from mtpchat.tui.chat_view import code_blocks, split_thinking
from mtpchat.tui.model_switcher import model_label
from mtpchat.tui.ssh_tunnel import TunnelError, local_socket_for, open_tunnel, remote_socket, tunnel_command
from mtpchat.tui.stats_bar import acceptance_bars, footer_line, stats_text
from mtpchat.tui.streaming import Outcome, ReplyFeed, terminal_outcome
from mtpchat.tui.themes import load_themes


@pytest.mark.parametrize("text, expected", [
    ("<think>\nweigh it\n</think>\n\nAnswer", ("weigh it", "Answer")),
    ("<think>still thinking", ("still thinking", "")),
    ("opened by the template\n</think>\n\nAnswer", ("opened by the template", "Answer")),
    ("No thinking here", (None, "No thinking here")),
])
def test_split_thinking(text, expected):
    assert split_thinking(text) == expected


def test_code_blocks():
    assert code_blocks("x\n```python\nprint(1)\n```\ntext\n```\nls\n```") == ["print(1)\n", "ls\n"]


def test_footer_and_bar_show_what_the_daemon_sent_and_new_keys_generically():
    stats = {"decode_tok_s": 96.4, "generated_tokens": 214, "draft_k": 3, "acceptance_rate": 0.82,
             "mean_acceptance_length": 2.46, "acceptance_per_position": [1.0, 0.5, 0.0],
             "cached_prompt_tokens": 120, "time_to_first_token_s": 0.0412}
    assert footer_line(stats) == "96 tok/s · 214 tokens · 82% draft accepted · 2.46 tokens/step"
    assert footer_line({"draft_k": 0, "generated_tokens": 5}) == "5 tokens · plain decoding"
    assert acceptance_bars([1.0, 0.5, 0.0]) == "█▄ "
    bar = stats_text(stats, "dense", streaming=True).plain
    assert bar.startswith("● live dense k=3 │ 96 tok/s │ 214 tok │ accepted 82% │ len 2.46 │ per position █▄ ")
    assert "cached prompt tokens 120" in bar and "time to first token 0.0412 s" in bar


def test_a_remote_engines_acceptance_is_shown_marked_when_approximate():
    """Another engine sends acceptance without a draft length of ours: shown, with ≈ when estimated."""
    exact = {"decode_tok_s": 50.0, "acceptance_rate": 0.6, "mean_acceptance_length": 1.8,
             "acceptance_per_position": [0.6, 0.3]}
    assert footer_line(exact) == "50 tok/s · 60% draft accepted · 1.80 tokens/step"
    assert "accepted 60% │ len 1.80 │ per position" in stats_text(exact, "remote", streaming=True).plain
    estimated = exact | {"acceptance_approximate": True}
    assert footer_line(estimated) == "50 tok/s · ≈60% draft accepted · ≈1.80 tokens/step"
    assert "approximate" not in stats_text(estimated, "remote", streaming=False).plain


def test_feed_batches_chunks_and_keeps_per_token_provenance():
    feed = ReplyFeed()
    feed.add_chunk({"text": "Hello wor", "pieces": ["Hel", "lo", " wor"], "drafted": [False, True, True],
                    "stats": {"generated_tokens": 3}})
    feed.add_chunk({"text": "ld!", "pieces": ["ld"], "drafted": [False], "stats": {"generated_tokens": 4}})
    feed.add_chunk({"text": "?", "tokens": []})  # a daemon without pieces: text only, uncoloured
    batch = feed.drain()
    assert batch.text == "Hello world!?" and batch.stats == {"generated_tokens": 4}
    assert batch.pieces == [["Hel", False], ["lo", True], [" wor", True], ["ld", False], ["!", None], ["?", None]]
    assert "".join(p for p, _ in batch.pieces) == batch.text
    assert feed.drain().text == ""


def test_feed_from_many_threads_loses_nothing_and_first_outcome_wins():
    feed = ReplyFeed()
    threads = [threading.Thread(target=lambda: [feed.add_chunk({"text": "x"}) for _ in range(500)])
               for _ in range(4)]
    for thread in threads:
        thread.start()
    drained = ""
    while any(t.is_alive() for t in threads):
        drained += feed.drain().text
    drained += feed.drain().text
    assert drained == "x" * 2000
    feed.finish(Outcome("interrupted", "cancelled"))
    feed.finish(Outcome("complete"))
    assert feed.outcome.status == "interrupted"


def test_feed_wakes_the_screen_once_per_drain_and_hands_over_the_outcome_after_the_chunks():
    wakes = []
    feed = ReplyFeed(lambda: wakes.append(1))
    for text in ("a", "b", "c"):
        feed.add_chunk({"text": text})
    assert len(wakes) == 1  # one wake-up however much piles up before the screen drains
    batch = feed.drain()
    assert (batch.text, batch.outcome) == ("abc", None)
    feed.add_chunk({"text": "d"})
    feed.finish(Outcome("complete"))
    assert len(wakes) == 2
    batch = feed.drain()
    assert (batch.text, batch.outcome.status) == ("d", "complete")
    assert feed.drain().outcome.status == "complete" and len(wakes) == 2


@pytest.mark.parametrize("model, words", [({"state": "loading", "progress": 0.426}, "loading 43%"),
                                          ({"state": "resident", "progress": 1.0}, "resident"),
                                          ({"state": "failed"}, "failed"), ({"state": "unloaded"}, "unloaded")])
def test_model_states_are_worded_once(model, words):
    assert model_state(model) == words
    assert words in model_label({"name": "m", "path": "/m", **model}, current=None).plain
    assert words in _model_line({"name": "m", "path": "/m", "default": False, "error": "", **model})


def test_terminal_messages_map_to_statuses():
    done = terminal_outcome({"type": "done", "text": "t", "stats": {"a": 1}})
    assert (done.status, done.text, done.stats) == ("complete", "t", {"a": 1})
    assert terminal_outcome({"type": "done", "text": "", "truncated": True}).text is None
    assert terminal_outcome({"type": "cancelled", "text": "t"}).status == "interrupted"
    error = terminal_outcome({"type": "error", "code": "unknown_model", "message": "unknown model 'x'"})
    assert (error.status, error.error) == ("error", "unknown model 'x' (unknown_model)")


def test_save_theme_keeps_the_users_file_and_the_config_reads_it_back():
    path = config_dir() / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('# my models\ndefault = "dense"\n[models.dense]\npath = "/x"\n[keys]\nswitch_model = "ctrl+l"\n')
    save_theme("mtpchat-light")
    save_theme("nord")
    text = path.read_text()
    assert text.startswith('theme = "nord"\n# my models\ndefault = "dense"\n') and text.count("theme =") == 1
    config = load_config()
    assert (config.theme, config.keys, config.default) == ("nord", {"switch_model": "ctrl+l"}, "dense")
    path.write_text("theme = 3\n")
    with pytest.raises(ValueError, match="theme must be a string"):
        load_config()
    path.write_text('[keys]\nswitch_model = ["ctrl+l"]\n')
    with pytest.raises(ValueError, match=r"\[keys\] maps binding ids to key strings"):
        load_config()


def test_themes_from_the_package_and_the_config_dir_with_errors_reported():
    user = config_dir() / "themes"
    user.mkdir(parents=True)
    (user / "mine.toml").write_text('name = "mine"\nprimary = "#ff0000"\n')
    (user / "broken.toml").write_text('name = "broken"\nprimary = "not a colour"\n')
    themes, errors = load_themes()
    names = {theme.name for theme in themes}
    assert {"mtpchat-dark", "mtpchat-light", "mine"} <= names and "broken" not in names
    assert len(errors) == 1 and "broken.toml" in errors[0]
    assert {t.name: t.dark for t in themes}["mtpchat-light"] is False


def test_ssh_tunnel_commands_and_remote_status_parsing():
    local = local_socket_for("me@gpu box")
    assert local.name == "ssh-me@gpu_box.sock"
    command = tunnel_command("me@gpu", local, "/run/user/1000/mtpchat/mtpchatd.sock")
    assert command[:2] == ["ssh", "-N"] and command[-1] == "me@gpu"
    assert f"{local}:/run/user/1000/mtpchat/mtpchatd.sock" in command and "ExitOnForwardFailure=yes" in command
    status = '{"running": true, "endpoint": "ipc:///run/user/1000/mtpchat/mtpchatd.sock"}'
    assert remote_socket("starting mtpchatd...\n" + status, "gpu") == "/run/user/1000/mtpchat/mtpchatd.sock"
    with pytest.raises(TunnelError, match="ipc socket"):
        remote_socket('{"endpoint": "tcp://127.0.0.1:5555"}', "gpu")
    with pytest.raises(TunnelError, match="no daemon status"):
        remote_socket("bash: mtpchat: command not found", "gpu")


def _fake_ssh(tmp_path, monkeypatch, script: str):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text("#!/bin/sh\n" + script)
    ssh.chmod(ssh.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "calls"


def test_open_tunnel_runs_the_remote_start_then_forwards_the_socket(tmp_path, monkeypatch):
    calls = _fake_ssh(tmp_path, monkeypatch, f"""echo "$@" >> {tmp_path}/calls
case "$1" in
  -N) for a in "$@"; do case "$a" in *.sock:*) touch "${{a%%:*}}";; esac; done; exec sleep 30;;
  *) echo '{{"running": true, "endpoint": "ipc:///remote/mtpchatd.sock"}}';;
esac
""")
    endpoint, process = open_tunnel("me@gpu", wait_s=10)
    try:
        assert endpoint == f"ipc://{local_socket_for('me@gpu')}"
        first, second = calls.read_text().splitlines()
        assert first == "me@gpu mtpchat daemon start --json"
        assert second.startswith("-N ") and f"{local_socket_for('me@gpu')}:/remote/mtpchatd.sock me@gpu" in second
    finally:
        process.terminate()
        process.wait()


def test_open_tunnel_says_what_failed(tmp_path, monkeypatch):
    _fake_ssh(tmp_path, monkeypatch, 'echo "ssh: connect to host gpu port 22: Connection refused" >&2; exit 255\n')
    with pytest.raises(TunnelError, match="(?s)Connection refused.*remote PATH"):
        open_tunnel("gpu", wait_s=5)


def test_mtpchat_without_a_subcommand_runs_the_tui_and_ssh_closes_its_tunnel(tmp_path, monkeypatch):
    from mtpchat import cli
    from mtpchat.tui.app import MtpChatApp

    runs = []
    monkeypatch.setattr(MtpChatApp, "run", lambda app: runs.append((app.endpoint, app.autostart, app.connection_note,
                                                                     app.chat.max_tokens)))
    assert cli.main([]) == 0
    assert runs[-1] == (None, True, "", 2048)
    _fake_ssh(tmp_path, monkeypatch, """case "$1" in
  -N) for a in "$@"; do case "$a" in *.sock:*) touch "${a%%:*}";; esac; done; exec sleep 30;;
  *) echo '{"endpoint": "ipc:///remote/mtpchatd.sock"}';;
esac
""")
    tunnels = []
    monkeypatch.setattr(ssh_tunnel, "open_tunnel", lambda *a: tunnels.append(open_tunnel(*a)) or tunnels[-1])
    assert cli.main(["--ssh", "me@gpu", "--max-tokens", "64"]) == 0
    assert runs[-1] == (f"ipc://{local_socket_for('me@gpu')}", False, "via ssh me@gpu", 64)
    assert tunnels[0][1].wait(timeout=10) is not None  # the tunnel ends with the app
    config_dir().mkdir(parents=True)
    (config_dir() / "config.toml").write_text("theme = [")
    assert cli.main([]) == 1  # a broken config.toml: a message, not a traceback


@pytest.mark.parametrize("compile_state, error, words", [
    ("compiling", "", "[compiling steps; eager meanwhile]"), ("on", "", "[compiled steps]"),
    ("failed", "InductorError: no C++ compiler", "[compile failed; eager] (InductorError: no C++ compiler)")])
def test_models_list_says_how_a_model_steps(compile_state, error, words):
    model = {"name": "m", "path": "/m", "default": False, "error": "", "state": "resident", "progress": 1.0,
             "compile": compile_state, "compile_error": error}
    assert _model_line(model).endswith(words)
    assert "compil" not in _model_line(model | {"compile": "off", "compile_error": ""})
