"""Conversation actions without a daemon: what a request carries (system prompt, thinking, history),
rename, delete with confirmation, a message typed while the daemon is away or still starting, thinking
shown only for models with a thinking mode, the palette's help lines, search, and a store that fails (a full disk
on Enter, a failing disk mid-reply, an empty file at start)."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

from textual.widgets import Button

from mtpchat.paths import data_dir
from mtpchat.store import Store, default_path
from mtpchat.tui.app import MtpChatApp
from mtpchat.tui.chat_view import ChatView
from mtpchat.tui.connection import DaemonState
from mtpchat.tui.prompt_input import PromptInput
from mtpchat.tui.replying import SAVE_S
from mtpchat.tui.screens import ConfirmScreen, TextEditor, TextPrompt
from tests.test_tui_app import screen_text, send, wait_until
from tests.test_tui_snapshots import SIZE
from tests.test_tui_streaming_view import ScriptedApp


class FailingWrites:
    """A store's connection on a failing disk: reads go through, writes fail."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def execute(self, sql: str, *args):
        if sql.startswith(("INSERT", "UPDATE", "DELETE")):
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.db, name)


def notices(app, title: str) -> list:
    return [n for n in app._notifications if n.title == title]


async def answer_prompt(pilot, key: str, value: str) -> None:
    """Open a one-line prompt (Enter saves) or an editor (ctrl+s saves) with `key` and save `value`."""
    await pilot.press(key)
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, (TextPrompt, TextEditor)))
    if isinstance(pilot.app.screen, TextPrompt):
        pilot.app.screen.query_one("#prompt-value").value = value
        await pilot.press("enter")
    else:
        pilot.app.screen.query_one("#editor-text").text = value
        await pilot.press("ctrl+s")
    await wait_until(pilot, lambda: not isinstance(pilot.app.screen, (TextPrompt, TextEditor)))


async def test_system_prompt_thinking_and_history_go_into_the_request(tmp_path):
    store = Store()
    conversation = store.create_conversation("Earlier", "moe")
    store.add_message(conversation, "user", "first")
    store.add_message(conversation, "assistant", "", "error", "moe")  # a failed reply is not history
    store.close()
    app = ScriptedApp(tmp_path, "ok")
    async with app.run_test(size=SIZE) as pilot:
        await answer_prompt(pilot, "f6", "Answer in French.")
        await answer_prompt(pilot, "f2", "Renamed")
        await pilot.press("f7")
        await send(pilot, "second")
        app.release(1, step=2)
        await wait_until(pilot, lambda: app.chat.reply is None)
        assert isinstance(app.fields.pop("seed"), int)  # a new one per request: tests/test_tui_settings.py
        assert app.fields == {"model": "moe", "system": "Answer in French.", "thinking": False, "max_tokens": 2048,
                              "messages": [{"role": "user", "content": "first"},
                                           {"role": "user", "content": "second"}]}
        assert app.chat.store.conversation(conversation).title == "Renamed"
        topbar = str(app.query_one("#topbar").render())
        assert "Renamed" in topbar and "thinking off" in topbar


async def test_delete_asks_first(tmp_path):
    store = Store()
    keep, doomed = store.create_conversation("keep"), store.create_conversation("doomed")
    store.close()
    app = MtpChatApp(f"ipc://{tmp_path}/none.sock", autostart=False)
    async with app.run_test(size=SIZE) as pilot:
        assert app.chat.conversation_id == doomed  # the newest opens
        await pilot.press("f8")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert app.focused.id == "no"  # Enter right away keeps everything
        await pilot.press("enter")
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert [c.id for c in app.chat.store.conversations()] == [doomed, keep]
        await pilot.press("f8")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        app.screen.query_one("#yes", Button).press()
        await wait_until(pilot, lambda: app.chat.conversation_id == keep)
        assert [c.id for c in app.chat.store.conversations()] == [keep]


async def test_a_message_typed_while_the_daemon_is_away_stays_in_the_box(tmp_path):
    app = MtpChatApp(f"ipc://{tmp_path}/none.sock", autostart=False)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.connection[0] == "offline")
        app.query_one(PromptInput).text = "hello?"
        await pilot.press("enter")
        await wait_until(pilot, lambda: notices(app, "Not sent"))
        assert app.query_one(PromptInput).text == "hello?" and app.chat.store.conversations() == []


class StartingApp(ScriptedApp):
    """A scripted reply source behind the real connection logic, with daemon states the test posts."""

    daemon_ready = MtpChatApp.daemon_ready

    def __init__(self, tmp_path, text: str):
        super().__init__(tmp_path, text)
        self.monitor = SimpleNamespace(start=lambda: None, stop=lambda: None, poke=lambda: None)


DEMO = {"name": "demo", "state": "resident", "default": True, "path": "builtin:smollm2", "thinking_mode": False}


async def test_a_message_sent_while_the_daemon_starts_is_queued_and_sent_when_it_answers(tmp_path):
    app = StartingApp(tmp_path, "Hello!")
    async with app.run_test(size=SIZE) as pilot:
        app.post_message(DaemonState("starting", detail="starting mtpchatd…"))
        await wait_until(pilot, lambda: app.connection[0] == "starting")
        app.query_one(PromptInput).text = "Are you there?"
        await pilot.press("enter")
        await wait_until(pilot, lambda: notices(app, "Queued"))
        assert [m.text for m in app.chat.store.messages(app.chat.conversation_id)] == ["Are you there?"]
        assert app.query_one(PromptInput).text == "" and not hasattr(app, "fields")  # shown, not yet asked
        app.post_message(DaemonState("connected", {"pid": 1, "models": [DEMO]}))
        await wait_until(pilot, lambda: hasattr(app, "fields"))
        app.release(10, step=10)
        await wait_until(pilot, lambda: app.chat.reply is None)
        assert app.fields["messages"] == [{"role": "user", "content": "Are you there?"}]
        assert [m.text for m in app.chat.store.messages(app.chat.conversation_id)] == ["Are you there?", "Hello!"]


async def test_thinking_is_shown_only_for_a_model_whose_template_has_a_thinking_mode(tmp_path):
    models = [DEMO, {"name": "qwen", "state": "resident", "default": False, "path": "/q", "thinking_mode": True}]
    store = Store()
    store.create_conversation("On the demo")
    store.close()
    app = StartingApp(tmp_path, "")
    async with app.run_test(size=SIZE) as pilot:
        app.post_message(DaemonState("connected", {"pid": 1, "models": models}))
        await wait_until(pilot, lambda: app.connection[0] == "connected")
        await pilot.pause()
        assert "On the demo" in str(app.query_one("#topbar").render())
        assert "thinking" not in str(app.query_one("#topbar").render())
        await pilot.press("f7")
        assert app.chat.conversation().thinking is True  # nothing to switch
        assert any("demo has no thinking mode" in n.message for n in app._notifications)
        app.chat.pick_model("qwen")
        await pilot.pause()
        assert "thinking on" in str(app.query_one("#topbar").render())


async def test_the_palette_says_what_each_command_does(tmp_path):
    app = MtpChatApp(f"ipc://{tmp_path}/none.sock", autostart=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+p")
        await pilot.press(*"Copy the reply")
        help_line = "Copies the focused (or last) reply to the terminal's clipboard · f4"
        await wait_until(pilot, lambda: help_line in screen_text(app))
        assert "action: " not in screen_text(app)


def inside(inner, outer) -> bool:
    return (outer.x <= inner.x and inner.right <= outer.right and outer.y <= inner.y
            and inner.bottom <= outer.bottom)


async def test_editing_a_long_multi_line_message_stays_inside_its_dialog(tmp_path):
    typed = "\n".join(f"line {n}: " + "many words " * 12 for n in range(30))
    store = Store()
    conversation = store.create_conversation("Long")
    store.add_message(conversation, "user", typed)
    store.close()
    app = ScriptedApp(tmp_path, "ok")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: isinstance(app.screen, TextEditor))
        await pilot.pause()
        editor, panel = app.screen.query_one("#editor-text"), app.screen.query_one(".panel")
        assert editor.text == typed
        assert inside(editor.region, panel.region) and inside(panel.region, app.screen.region)
        assert inside(app.screen.query_one(".hint").region, panel.region)  # the hint is not pushed out
        await pilot.press("ctrl+j")  # the editor takes new lines; ctrl+s saves
        editor.insert("edited")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.chat.conversation_id != conversation)
        assert app.chat.store.messages(app.chat.conversation_id)[0].text == typed + "edited"


async def test_no_app_key_is_taken_by_the_message_box(tmp_path):
    app = MtpChatApp(f"ipc://{tmp_path}/none.sock", autostart=False)
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.focused, PromptInput)
        keys = [key for binding in app.BINDINGS for key in binding.key.split(",") if key != "question_mark"]
        assert len(keys) > 15
        assert {key: app.active_bindings[key].node for key in keys} == {key: app for key in keys}
        await pilot.press("f7")
        assert app.chat.store.conversation(app.chat.conversation_id).thinking is False


async def test_a_full_disk_on_enter_keeps_the_message_in_the_box_and_a_recovery_file(tmp_path):
    app = ScriptedApp(tmp_path, "never asked for")
    async with app.run_test(size=SIZE) as pilot:
        store = app.chat.store
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL as soon as the file must grow
        text = "a long message " * 2000
        app.query_one(PromptInput).text = text
        await pilot.press("enter")
        await wait_until(pilot, lambda: notices(app, "Not sent"))
        assert app.is_running and app.query_one(PromptInput).text == text
        assert not hasattr(app, "fields")  # nothing went to the daemon
        assert store.conversations() == [] and app.chat.conversation_id is None  # no empty conversation left
        (copy,) = data_dir().glob("unsent-*.txt")
        assert copy.read_text() == text and copy.stat().st_mode & 0o777 == 0o600
        (notice,) = notices(app, "Not sent")
        assert notice.severity == "error" and f"the disk holding {store.path} is full or failing" in notice.message
        assert f"Your message was not sent; it is still in the box; a copy is in {copy}." in notice.message


async def test_a_failing_disk_mid_reply_is_told_once_and_the_reply_streams_on(tmp_path):
    app = ScriptedApp(tmp_path, "word " * 400)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Talk")
        app.release(10, step=5)
        await wait_until(pilot, lambda: app.sent >= 50)
        app.chat.store.db = FailingWrites(app.chat.store.db)
        view = app.query_one(ChatView).views()[-1]
        for _ in range(3):  # three save intervals, each with a failing save of a longer reply
            shown = len(view.text)
            app.release(20, step=5)
            await wait_until(pilot, lambda: len(view.text) > shown)
            await pilot.pause(SAVE_S + 0.1)  # a save interval passes: its save fails
        app.release(400, step=5)
        await wait_until(pilot, lambda: app.chat.reply is None)
        assert app.is_running and view.text == app.script
        (notice,) = notices(app, "Reply not saved")
        failing = f"the disk holding {app.chat.store.path} is full or failing (disk I/O error)"
        assert notice.severity == "error" and failing in notice.message


async def test_an_empty_store_file_is_started_afresh_with_a_notice(tmp_path):
    default_path().write_bytes(b"")
    app = MtpChatApp(f"ipc://{tmp_path}/none.sock", autostart=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        (notice,) = [n for n in app._notifications if "was an empty file (0 bytes)" in n.message]
        assert notice.severity == "warning" and str(default_path()) in notice.message


async def test_an_edited_message_the_store_cannot_take_goes_to_a_recovery_file(tmp_path):
    app = ScriptedApp(tmp_path, "ok")
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "first")
        app.release(1, step=2)
        await wait_until(pilot, lambda: app.chat.reply is None)
        original = app.chat.conversation_id
        app.chat.store.db = FailingWrites(app.chat.store.db)
        await answer_prompt(pilot, "ctrl+g", "edited")
        await wait_until(pilot, lambda: notices(app, "Not sent"))
        (copy,) = data_dir().glob("unsent-*.txt")
        assert copy.read_text() == "edited" and app.chat.conversation_id == original and app.chat.reply is None
        assert f"Your edited message was not sent; a copy is in {copy}." in notices(app, "Not sent")[0].message


async def test_search_reaches_its_results_with_down_highlights_the_match_and_opens_at_the_hit(tmp_path):
    store = Store()
    trip = store.create_conversation("Trip")
    store.add_message(trip, "user", "Plan a trip to [Paris] in spring")
    hit = store.add_message(trip, "assistant", "", "complete", "dense")
    store.update_message(hit, text="Paris in April: the chestnut trees bloom.", status="complete")
    for n in range(12):
        store.add_message(trip, "user", f"follow-up {n}\n" + "more words here\n" * 4)
    store.create_conversation("Newer")
    store.close()
    app = MtpChatApp(f"ipc://{tmp_path}/none.sock", autostart=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+f", *"chestnut", "down")
        results = app.query_one("#conversations")
        assert app.focused is results and results.highlighted == 0
        label = results.get_option_at_index(0).prompt
        assert "[" not in label.plain and "chestnut" in label.plain
        assert any(label.plain[span.start:span.end] == "chestnut" and "reverse" in str(span.style)
                   for span in label.spans)
        search = app.query_one("#search")
        search.value = "paris"

        def labels() -> list[str]:
            return [results.get_option_at_index(i).prompt.plain for i in range(results.option_count)]
        await wait_until(pilot, lambda: any("Plan a trip to [Paris] in spring" in label  # the user's own brackets
                                            for label in labels()))
        search.value = "chestnut"
        search.focus()
        await pilot.press("enter", "enter")
        await wait_until(pilot, lambda: app.chat.conversation_id == trip)
        chat = app.query_one(ChatView)

        def hit_focused_and_in_view() -> bool:
            view = next((v for v in chat.views() if v.message_id == hit), None)
            return (view is not None and app.focused is view and chat.max_scroll_y > 0
                    and chat.scroll_offset.y <= view.virtual_region.y < chat.scroll_offset.y + chat.size.height)
        await wait_until(pilot, hit_focused_and_in_view)
