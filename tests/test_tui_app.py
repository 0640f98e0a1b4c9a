"""The TUI as a user drives it (Textual pilot) against a real mtpchatd with the tiny checkpoints:
send and stream, cancel, regenerate, edit, switch model, search, export, token view, copy, theme
and key settings, a daemon killed mid-reply, restarted, and started by the app itself."""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import time

import pytest
from rich.console import Console

from mtpchat.client import DaemonClient
from mtpchat.paths import config_dir, data_dir, pid_file
from mtpchat.tui.app import MtpChatApp
from mtpchat.tui.chat_view import ChatView
from mtpchat.tui.model_switcher import ModelSwitcher
from mtpchat.tui.prompt_input import PromptInput
from mtpchat.tui.screens import HelpScreen, StatsScreen, TextEditor
from tests.helpers import start_daemon_process, stop_process, wait_resident, write_tiny_config

SIZE = (110, 36)


@pytest.fixture(scope="module")
def shared_daemon(tiny, tmp_path_factory):
    """One daemon (dense default, moe) for the tests that do not stop it; its endpoint."""
    home = tmp_path_factory.mktemp("daemon-home")
    write_tiny_config(home, tiny)
    process = start_daemon_process(home)
    endpoint = f"ipc://{home}/runtime/mtpchatd.sock"
    with DaemonClient(endpoint, timeout_s=60) as client:
        client.request("hello")
        wait_resident(client, ["dense", "moe"])
    yield endpoint
    assert stop_process(process) == 0


def screen_text(app) -> str:
    """The screen as plain text, dialogs included."""
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), record=True)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


async def wait_until(pilot, predicate, timeout_s: float = 60.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {predicate.__doc__ or predicate}")


async def connected(pilot) -> None:
    await wait_until(pilot, lambda: pilot.app.connection[0] == "connected")


async def send(pilot, text: str) -> None:
    """Type and send `text`; returns once its reply has started (a short reply may already be over)."""
    app = pilot.app
    def count() -> int:
        return len(app.chat.store.messages(app.chat.conversation_id)) if app.chat.conversation_id is not None else 0
    before = count()
    app.query_one(PromptInput).text = text
    app.query_one(PromptInput).focus()
    await pilot.press("enter")
    await wait_until(pilot, lambda: count() == before + 2)  # the user's message and the reply's row


async def reply_done(pilot) -> None:
    await wait_until(pilot, lambda: pilot.app.chat.reply is None)
    await pilot.pause()


async def exchange(pilot, text: str) -> None:
    """Send `text` and wait for the whole reply."""
    await send(pilot, text)
    await reply_done(pilot)


def reference_reply(endpoint: str, text: str, max_tokens: int, model: str | None = None) -> str:
    with DaemonClient(endpoint) as client:
        done = list(client.generate(messages=[{"role": "user", "content": text}], max_tokens=max_tokens,
                                    model=model))[-1]
    return done["text"]


async def test_send_streams_the_greedy_reply_into_view_store_and_stats(shared_daemon):
    app = MtpChatApp(shared_daemon, autostart=False, max_tokens=12)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await send(pilot, "Hello there")
        assert app.chat.store.messages(app.chat.conversation_id)[0].text == "Hello there"  # stored before the reply
        await reply_done(pilot)
        user, reply = app.chat.store.messages(app.chat.conversation_id)
        assert (user.role, reply.role, reply.status, reply.model) == ("user", "assistant", "complete", "dense")
        assert reply.text == reference_reply(shared_daemon, "Hello there", 12)
        assert reply.stats["generated_tokens"] == 12 and len(reply.pieces) == 12
        view = app.query_one(ChatView).views()[-1]
        assert view.text == reply.text
        assert "12 tokens" in str(view.query_one(".message-footer").render())
        assert str(app.query_one("#stats").render()).startswith("last reply dense k=2")
        assert app.chat.store.conversation(app.chat.conversation_id).title == "Hello there"
        await pilot.press("f4")
        assert app.clipboard == reply.text
        await pilot.press("ctrl+t")
        tokens = view.query_one(".tokens")
        assert tokens.display and str(tokens.render()) == reply.text


async def test_escape_cancels_and_keeps_the_partial_reply_then_regenerate_replaces_it(shared_daemon):
    app = MtpChatApp(shared_daemon, autostart=False, max_tokens=4000)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await send(pilot, "Tell me a long story")
        await wait_until(pilot, lambda: len(app.chat.reply.view.text) > 10)
        await pilot.press("escape")
        await reply_done(pilot)
        reply = app.chat.store.messages(app.chat.conversation_id)[-1]
        assert reply.status == "interrupted" and reply.error == "cancelled"
        assert len(reply.text) > 10 and reply.text == app.query_one(ChatView).views()[-1].text
        assert "interrupted" in str(app.query_one(ChatView).views()[-1].query_one(".message-footer").render())
        app.chat.max_tokens = 12
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: app.chat.store.messages(app.chat.conversation_id)[-1].status == "complete")
        await reply_done(pilot)
        messages = app.chat.store.messages(app.chat.conversation_id)
        assert [m.role for m in messages] == ["user", "assistant"]
        assert messages[-1].status == "complete"
        assert messages[-1].text == reference_reply(shared_daemon, "Tell me a long story", 12)
        assert len(app.query_one(ChatView).views()) == 2


async def test_switch_model_is_saved_per_conversation_and_used(shared_daemon):
    app = MtpChatApp(shared_daemon, autostart=False, max_tokens=8)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await exchange(pilot, "Hi")
        with DaemonClient(shared_daemon) as client:
            assert client.request("unload", model="moe")["type"] == "ok"

        def moe_state():
            return next(m["state"] for m in app.daemon_status["models"] if m["name"] == "moe")

        await wait_until(pilot, lambda: moe_state() == "unloaded")
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: isinstance(app.screen, ModelSwitcher))
        assert "unloaded" in screen_text(app)
        await pilot.press("down", "enter")
        await wait_until(pilot, lambda: app.chat.store.conversation(app.chat.conversation_id).model == "moe")
        await wait_until(pilot, lambda: moe_state() == "resident")  # the switcher asked the daemon to load it
        await exchange(pilot, "And now?")
        reply = app.chat.store.messages(app.chat.conversation_id)[-1]
        assert (reply.model, reply.status) == ("moe", "complete"), reply.error
        assert reply.stats["draft_k"] == 4  # moe is configured with draft = "auto" (k up to 4), dense with 2
        assert app.query_one(ChatView).views()[-1].query_one(".message-title").render().plain == "Assistant · moe"
        await pilot.press("ctrl+n")
        assert app.chat.conversation_id is None and app.chat.model() == "moe"  # the last pick carries over


async def test_search_opens_the_matching_conversation_and_exports_write_files(shared_daemon):
    app = MtpChatApp(shared_daemon, autostart=False, max_tokens=6)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await exchange(pilot, "Tell me about walruses")
        walruses = app.chat.conversation_id
        await pilot.press("ctrl+n")
        await exchange(pilot, "Something else entirely")
        await pilot.press("ctrl+f")
        await pilot.press(*"walrus")
        await pilot.pause(0.2)
        await pilot.press("enter", "enter")
        await wait_until(pilot, lambda: app.chat.conversation_id == walruses)
        assert app.query_one(ChatView).views()[0].text == "Tell me about walruses"
        await pilot.press("ctrl+s")
        assert app.last_export.read_text().startswith("# Tell me about walruses\n")
        await pilot.press("ctrl+p")
        await pilot.press(*"Export the conversation as JSON")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.last_export.suffix == ".json")
        exported = json.loads(app.last_export.read_text())
        assert [m["role"] for m in exported["messages"]] == ["user", "assistant"]
        assert app.last_export.parent == data_dir() / "exports"


async def test_edit_forks_the_conversation_and_history_recalls_inputs(shared_daemon):
    app = MtpChatApp(shared_daemon, autostart=False, max_tokens=6)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await exchange(pilot, "first")
        original = app.chat.conversation_id
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: isinstance(app.screen, TextEditor))
        app.screen.query_one("#editor-text").text = "first, edited"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.chat.conversation_id != original)
        await reply_done(pilot)
        assert [m.text for m in app.chat.store.messages(app.chat.conversation_id)][0] == "first, edited"
        assert app.chat.store.messages(app.chat.conversation_id)[1].status == "complete"
        assert [m.text for m in app.chat.store.messages(original)][0] == "first"  # the original branch is kept
        prompt = app.query_one(PromptInput)
        prompt.focus()
        await pilot.press(*"two", "ctrl+j", *"lines")
        assert prompt.text == "two\nlines"
        prompt.text = ""
        await pilot.press("up")
        assert prompt.text == "first"  # the edit was not typed into the box, so history has "first"
        await pilot.press("down")
        assert prompt.text == ""


async def test_theme_choice_and_key_overrides_persist_in_config(shared_daemon):
    config = config_dir() / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[keys]\nswitch_model = "ctrl+l"\n')
    app = MtpChatApp(shared_daemon, autostart=False)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        assert app.theme == "mtpchat-dark"
        app.theme = "mtpchat-light"
        await pilot.pause()
        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: isinstance(app.screen, ModelSwitcher))
        await pilot.press("escape", "f1")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert ("ctrl+l", "Switch model", "switch_model") in app.screen.rows
    assert config.read_text().startswith('theme = "mtpchat-light"\n[keys]')
    again = MtpChatApp(shared_daemon, autostart=False)
    async with again.run_test(size=SIZE) as pilot:
        assert again.theme == "mtpchat-light"


async def test_daemon_killed_mid_reply_keeps_the_partial_and_reconnects_after_restart(tiny, tmp_path, monkeypatch):
    home = tmp_path / "h"
    write_tiny_config(home, tiny)
    monkeypatch.setenv("MTPCHAT_HOME", str(home))
    daemon = start_daemon_process(home)
    app = MtpChatApp(autostart=False, max_tokens=4000)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await send(pilot, "Tell me a long story")
        await wait_until(pilot, lambda: len(app.chat.reply.view.text) > 10)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        await reply_done(pilot)
        reply = app.chat.store.messages(app.chat.conversation_id)[-1]
        assert reply.status == "interrupted" and len(reply.text) > 10
        assert reply.text == app.query_one(ChatView).views()[-1].text
        await wait_until(pilot, lambda: app.connection[0] == "offline")
        assert "not running" in str(app.query_one("#topbar").render())
        daemon = start_daemon_process(home)
        try:
            await connected(pilot)
            app.chat.max_tokens = 6
            await exchange(pilot, "Are you back?")
            assert app.chat.store.messages(app.chat.conversation_id)[-1].status == "complete"
        finally:
            assert stop_process(daemon) == 0


async def test_the_app_starts_the_daemon_when_none_answers(tiny, tmp_path, monkeypatch):
    home = tmp_path / "h"
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text(f'[models.dense]\npath = "{tiny["qwen3.6-dense-tiny"]}"\n')
    monkeypatch.setenv("MTPCHAT_HOME", str(home))
    app = MtpChatApp(autostart=True)
    states = []
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: states.append(app.connection[0]) or app.connection[0] == "connected")
        with DaemonClient() as client:
            pid = client.request("hello")["pid"]
    assert "starting" in states
    os.kill(pid, signal.SIGTERM)
    for _ in range(600):  # the daemon removes its pid file as it exits
        if not pid_file().exists():
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the daemon the app started did not stop")


async def test_stats_panel_shows_the_daemons_models_devices_and_unknown_fields(shared_daemon):
    app = MtpChatApp(shared_daemon, autostart=False)
    async with app.run_test(size=(SIZE[0], 80)) as pilot:  # tall enough for every table of the panel
        await connected(pilot)
        app.daemon_status = {**app.daemon_status, "cache_used_bytes": 12345}  # a field added by a newer daemon
        await pilot.press("f3")
        await wait_until(pilot, lambda: isinstance(app.screen, StatsScreen))
        expected = ("dense", "moe", "resident", "cpu", "layers 0-7 + embedding + head",
                    "conversation state cache", " states, ", "cache used bytes", "12345", "0 replies")
        await wait_until(pilot, lambda: all(text in screen_text(app) for text in expected))
        await pilot.press("escape")
        app.query_one(ChatView).focus()
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))


async def test_a_daemon_that_cannot_start_is_reported_with_its_log(tmp_path, monkeypatch):
    monkeypatch.setenv("MTPCHAT_HOME", str(tmp_path / "h"))
    pid_file().parent.mkdir(parents=True, exist_ok=True)
    with open(pid_file(), "w") as lock:  # a wedged daemon holds the lock but does not answer: a new one exits 1
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        app = MtpChatApp(autostart=True)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: "exited with code 1" in app.connection[1])
            await pilot.pause(1.5)  # later polls keep the reason on screen
            assert "exited with code 1" in str(app.query_one("#topbar").render())
            assert "mtpchatd.log" in app.connection[1] and "another daemon is running" in app.connection[1]
