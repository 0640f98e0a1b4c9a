"""Modal screens: help (every key, with its binding id), confirm, a one-line text prompt, a multi-line
text editor, and the stats panel.

Each returns its answer through `dismiss` (None when the user backs out with Esc), so the app's
actions read as plain `await self.push_screen_wait(...)` calls.
"""

from __future__ import annotations

import json

from rich.table import Table
from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static, TextArea

from mtpchat.config import format_size
from mtpchat.protocol import (
    ACCEPTANCE_PER_POSITION,
    ACCEPTED_TOKENS,
    DRAFTED_TOKENS,
    GENERATED_TOKENS,
)
from mtpchat.status_text import model_state, placement_line, state_cache_line
from mtpchat.tui.stats_bar import acceptance_bars, footer_line


class Dialog(ModalScreen):
    BINDINGS = [Binding("escape", "dismiss(None)", "Close", show=False)]
    DEFAULT_CLASSES = "dialog"


class HelpScreen(Dialog):
    BINDINGS = Dialog.BINDINGS + [Binding("f1,question_mark,q", "dismiss(None)", show=False)]

    def __init__(self, rows: list[tuple[str, str, str]]):
        super().__init__()
        self.rows = rows

    def compose(self):
        table = Table("keys", "action", "binding id", expand=True, box=None)
        for keys, description, binding_id in self.rows:
            table.add_row(Text(keys, style="bold"), description, Text(binding_id, style="dim"))
        with VerticalScroll(classes="panel"):
            yield Static("Keys — override any of them in config.toml under [keys], by binding id",
                         classes="title", markup=False)
            yield Static(table)
            yield Static("In the message box: Enter sends, ctrl+j / alt+enter / shift+enter add a line, "
                         "Up/Down walk the history. Ctrl+P opens the command palette: every action is there.",
                         classes="hint")


class ConfirmScreen(Dialog):
    AUTO_FOCUS = "#no"  # Enter on a dialog that just opened must not destroy anything

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self):
        with Vertical(classes="panel"):
            yield Static(self.question, classes="title")
            yield Button("Yes", id="yes", variant="error")
            yield Button("No", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class TextPrompt(Dialog):
    """One line of text: a conversation's title."""

    def __init__(self, title: str, value: str = ""):
        super().__init__()
        self.title_text, self.value = title, value

    def compose(self):
        with Vertical(classes="panel"):
            yield Static(self.title_text, classes="title")
            yield Input(self.value, id="prompt-value")
            yield Static("Enter saves, Esc cancels", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)


class TextEditor(Dialog):
    """Text that may run to many lines (an edited message, a system prompt), wrapped inside the dialog;
    Enter is a new line there, so ctrl+s saves."""

    BINDINGS = Dialog.BINDINGS + [Binding("ctrl+s", "save", "Save", show=False)]

    def __init__(self, title: str, value: str = ""):
        super().__init__()
        self.title_text, self.value = title, value

    def compose(self):
        with Vertical(classes="panel wide editor"):
            yield Static(self.title_text, classes="title")
            yield TextArea(self.value, soft_wrap=True, id="editor-text")
            yield Static("ctrl+s saves, Esc cancels", classes="hint")

    def on_mount(self) -> None:
        self.query_one(TextArea).move_cursor(self.query_one(TextArea).document.end)

    def action_save(self) -> None:
        self.dismiss(self.query_one(TextArea).text)


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def status_tables(status: dict) -> list:
    """The daemon's status as tables: models (with their placement), devices, then everything else —
    keys this client does not know are listed as they come."""
    models = Table("model", "state", "details", title="Models", expand=True, title_justify="left")
    for model in status.get("models", []):
        details = ", ".join(f"{k}={_value(v)}" for k, v in model.items()
                            if k not in ("name", "state", "progress", "placement") and v not in (None, "", False))
        placement = "\n".join(placement_line(part) for part in model.get("placement") or [])
        models.add_row(model.get("name", "?"), model_state(model), details + (f"\n{placement}" if placement else ""))
    devices = Table("device", "memory used / total", "other", title="Devices", expand=True, title_justify="left")
    for device in status.get("devices", []):
        memory = (f"{format_size(device['memory_used'])} / {format_size(device['memory_total'])}"
                  if "memory_total" in device else "—")
        other = ", ".join(f"{k}={_value(v)}" for k, v in device.items() if not k.startswith("memory") and k != "name")
        devices.add_row(device.get("name", "?"), memory, other)
    rest = Table("daemon", "", title="Daemon", expand=True, title_justify="left")
    for key, value in status.items():
        if key == "state_cache" and isinstance(value, dict):
            rest.add_row("conversation state cache", state_cache_line(value))
        elif key not in ("models", "devices", "v", "id", "type"):
            rest.add_row(key.replace("_", " "), _value(value))
    return [models, devices, rest]


def conversation_summary(replies: list[dict]) -> str:
    """Totals over a conversation's replies (each a stats map)."""
    tokens = sum(r.get(GENERATED_TOKENS, 0) for r in replies)
    drafted = sum(r.get(DRAFTED_TOKENS, 0) for r in replies)
    accepted = sum(r.get(ACCEPTED_TOKENS, 0) for r in replies)
    line = f"{len(replies)} replies · {tokens} tokens"
    if drafted:
        line += f" · {accepted / drafted:.0%} of {drafted} drafted tokens accepted"
    if replies:
        line += f"\nlast reply: {footer_line(replies[-1])}"
        if replies[-1].get(ACCEPTANCE_PER_POSITION):
            line += f" · per position {acceptance_bars(replies[-1][ACCEPTANCE_PER_POSITION])}"
    return line


class StatsScreen(Dialog):
    BINDINGS = Dialog.BINDINGS + [Binding("f3", "dismiss(None)", show=False)]

    def __init__(self, status: dict | None, replies: list[dict]):
        super().__init__()
        self.status, self.replies = status, replies

    def compose(self):
        with VerticalScroll(classes="panel wide"):
            yield Static("This conversation", classes="title")
            yield Static(conversation_summary(self.replies), id="conversation-stats")
            if self.status is None:
                yield Static("mtpchatd is not connected", classes="title")
            else:
                for table in status_tables(self.status):
                    yield Static(table)
