"""Conversation actions without a daemon: what a request carries (system prompt, thinking, history),
rename, delete with confirmation, and a message typed while the daemon is away."""

from __future__ import annotations

from textual.widgets import Button

from mtpchat.store import Store
from mtpchat.tui.app import MtpChatApp
from mtpchat.tui.prompt_input import PromptInput
from mtpchat.tui.screens import ConfirmScreen, TextPrompt
from tests.test_tui_app import send, wait_until
from tests.test_tui_snapshots import SIZE
from tests.test_tui_streaming_view import ScriptedApp


async def answer_prompt(pilot, key: str, value: str) -> None:
    await pilot.press(key)
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, TextPrompt))
    pilot.app.screen.query_one("#prompt-value").value = value
    await pilot.press("enter")
    await wait_until(pilot, lambda: not isinstance(pilot.app.screen, TextPrompt))


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
        assert app.fields == {"model": "moe", "system": "Answer in French.", "thinking": False, "max_tokens": 2048,
                              "messages": [{"role": "user", "content": "first"},
                                           {"role": "user", "content": "second"}]}
        assert app.chat.store.conversation(conversation).title == "Renamed"
        assert "Renamed" in str(app.query_one("#topbar").render()) and "thinking off" in str(app.query_one("#topbar").render())


async def test_delete_asks_first(tmp_path):
    store = Store()
    keep, doomed = store.create_conversation("keep"), store.create_conversation("doomed")
    store.close()
    app = MtpChatApp(f"ipc://{tmp_path}/none.sock", autostart=False)
    async with app.run_test(size=SIZE) as pilot:
        assert app.chat.conversation_id == doomed  # the newest opens
        await pilot.press("f8")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        app.screen.query_one("#no", Button).press()
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
        await pilot.pause(0.1)
        assert app.query_one(PromptInput).text == "hello?" and app.chat.store.conversations() == []
        assert any("Not sent" == n.title for n in app._notifications)


async def test_no_app_key_is_taken_by_the_message_box(tmp_path):
    app = MtpChatApp(f"ipc://{tmp_path}/none.sock", autostart=False)
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.focused, PromptInput)
        keys = [key for binding in app.BINDINGS for key in binding.key.split(",") if key != "question_mark"]
        assert len(keys) > 15
        assert {key: app.active_bindings[key].node for key in keys} == {key: app for key in keys}
        await pilot.press("f7")
        assert app.chat.store.conversation(app.chat.conversation_id).thinking is False
