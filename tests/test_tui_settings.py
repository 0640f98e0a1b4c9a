"""A conversation's settings dialog (F12) as a user drives it, without a daemon: the model's defaults as
placeholders, saved values in the store, in the stats bar and in the next request (only those set), a
bad value refused under its field with nothing saved, and regenerate sampling anew unless a seed is pinned."""

from __future__ import annotations

from textual.widgets import Checkbox, Input, Static

from mtpchat.store import Store
from mtpchat.tui.connection import DaemonState
from mtpchat.tui.screens import HelpScreen
from mtpchat.tui.settings_dialog import SettingsDialog, read_settings, summary
from tests.test_tui_app import send, wait_until
from tests.test_tui_conversations import StartingApp
from tests.test_tui_snapshots import SIZE

QWEN = {"name": "qwen", "state": "resident", "default": True, "path": "Qwen/Qwen3.6-27B", "draft": 3,
        "sampling": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0, "repetition_penalty": 1.0,
                     "presence_penalty": 0.0, "frequency_penalty": 0.0},
        "sampling_no_thinking": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0,
                                 "repetition_penalty": 1.0, "presence_penalty": 1.5, "frequency_penalty": 0.0}}


async def open_settings(pilot) -> SettingsDialog:
    await pilot.press("f12")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, SettingsDialog))
    await pilot.pause()
    return pilot.app.screen


def field(dialog: SettingsDialog, name: str) -> Input:
    return dialog.query_one(f"#setting-{name}", Input)


async def test_settings_are_saved_shown_and_sent_with_the_model_defaults_as_placeholders(tmp_path):
    store = Store()
    conversation = store.create_conversation("Poems", "qwen")
    store.close()
    app = StartingApp(tmp_path, "ok")
    async with app.run_test(size=SIZE) as pilot:
        app.post_message(DaemonState("connected", {"pid": 1, "models": [QWEN]}))
        await wait_until(pilot, lambda: app.connection[0] == "connected")
        dialog = await open_settings(pilot)
        assert field(dialog, "temperature").placeholder == "default 0.6"  # thinking on: the thinking defaults
        assert (field(dialog, "draft").placeholder, field(dialog, "max_tokens").placeholder) == ("default 3",
                                                                                                 "default 2048")
        field(dialog, "temperature").value = "0.7"
        field(dialog, "top_k").value = "40"
        field(dialog, "presence_penalty").value = "1.5"
        field(dialog, "draft").value = "auto"
        dialog.query_one(Checkbox).value = False
        field(dialog, "temperature").focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: not isinstance(app.screen, SettingsDialog))
        saved = app.chat.store.conversation(conversation)
        assert saved.settings == {"temperature": 0.7, "top_k": 40, "presence_penalty": 1.5, "draft": "auto"}
        assert saved.thinking is False
        assert "T0.7 k40 pres1.5 draft=auto" in str(app.query_one("#stats").render())
        await send(pilot, "A haiku")
        app.release(1, step=2)
        await wait_until(pilot, lambda: app.chat.reply is None)
        sent = {k: v for k, v in app.fields.items() if k not in ("messages", "model", "system")}
        assert isinstance(sent.pop("seed"), int)
        assert sent == {"temperature": 0.7, "top_k": 40, "presence_penalty": 1.5, "draft": "auto",
                        "thinking": False, "max_tokens": 2048}  # top_p and the rest: the model's defaults
        dialog = await open_settings(pilot)  # thinking off now: the model's no-thinking defaults
        assert (field(dialog, "temperature").value, field(dialog, "top_p").placeholder) == ("0.7", "default 0.8")
        await pilot.press("escape")
        await pilot.press("f1")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert ("f12", "Settings of the conversation: sampling, draft, length, seed", "settings") in app.screen.rows


async def test_a_bad_value_is_named_under_its_field_and_nothing_is_saved(tmp_path):
    app = StartingApp(tmp_path, "ok")
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await open_settings(pilot)
        field(dialog, "temperature").value = "0.5"
        field(dialog, "top_p").value = "2"
        field(dialog, "draft").value = "9"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, SettingsDialog)
        errors = {name: str(dialog.query_one(f"#error-{name}", Static).render())
                  for name in ("temperature", "top_p", "draft") if dialog.query_one(f"#error-{name}").display}
        assert errors == {"top_p": "must be greater than 0 and at most 1",
                          "draft": 'must be an integer from 0 to 4 or "auto"'}
        assert field(dialog, "top_p").has_class("-invalid") and app.focused is field(dialog, "top_p")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, SettingsDialog))
        assert app.chat.store.conversations() == []  # nothing was saved, not even a new conversation


def test_typed_values_go_through_the_protocol_check():
    assert read_settings({"temperature": " 1 ", "top_k": "", "seed": "7", "draft": "0"}) == (
        {"temperature": 1.0, "seed": 7, "draft": 0}, {})
    assert read_settings({"temperature": "hot", "top_k": "2.5", "min_p": "nan"})[1] == {
        "temperature": "must be a number", "top_k": "must be an integer of at least 0",
        "min_p": "must be at least 0 and at most 1"}
    assert summary({"seed": 7, "top_p": 0.8, "temperature": 0.7, "max_tokens": 512}) == "T0.7 p0.8 max512 seed7"


async def test_regenerate_samples_anew_unless_the_conversation_pins_a_seed(tmp_path):
    app = StartingApp(tmp_path, "ok")
    async with app.run_test(size=SIZE) as pilot:
        app.post_message(DaemonState("connected", {"pid": 1, "models": [QWEN]}))
        await wait_until(pilot, lambda: app.connection[0] == "connected")
        await send(pilot, "Roll a die")
        app.release(1, step=2)
        await wait_until(pilot, lambda: app.chat.reply is None)
        seeds = [app.fields["seed"]]
        for _ in range(2):
            await pilot.press("ctrl+r")
            await wait_until(pilot, lambda: app.fields["seed"] != seeds[-1] and app.chat.reply is None)
            seeds.append(app.fields["seed"])
        assert len(set(seeds)) == 3
        dialog = await open_settings(pilot)
        field(dialog, "seed").value = "42"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: not isinstance(app.screen, SettingsDialog))
        for _ in range(2):
            del app.fields
            await pilot.press("ctrl+r")
            await wait_until(pilot, lambda: hasattr(app, "fields") and app.chat.reply is None)
            assert app.fields["seed"] == 42
