"""A conversation's reply settings: sampling (temperature, top-p, top-k, min-p, three penalties), the
draft length, the reply length, a pinned seed, and thinking.

A field left empty is the default — the model's, shown greyed inside the field where the daemon said
what it is — so a conversation carries only what the user chose, and a model whose defaults change takes
the others along. Values are checked by mtpchat.protocol.reply_settings, the daemon's own check: what
the dialog saves the daemon takes, and a bad value is named under its field with nothing saved.
`summary` writes the same settings in a few characters for the stats bar.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Checkbox, Input, Label, Static

from mtpchat.protocol import DRAFT_AUTO, MAX_DRAFT, REPLY_SETTINGS, ProtocolError, reply_settings
from mtpchat.tui.screens import Dialog

# request field -> (label in the dialog, prefix in the stats bar); one entry per protocol.REPLY_SETTINGS
FIELDS = {
    "temperature": ("Temperature", "T"),
    "top_p": ("Top-p", "p"),
    "top_k": ("Top-k", "k"),
    "min_p": ("Min-p", "minp"),
    "repetition_penalty": ("Repetition penalty", "rep"),
    "presence_penalty": ("Presence penalty", "pres"),
    "frequency_penalty": ("Frequency penalty", "freq"),
    "draft": (f"Draft k (0–{MAX_DRAFT}, {DRAFT_AUTO})", "draft="),
    "max_tokens": ("Max tokens", "max"),
    "seed": ("Seed", "seed"),
}
assert set(FIELDS) == set(REPLY_SETTINGS), "a reply setting without a place in the dialog"


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def summary(settings: dict) -> str:
    """'T0.7 p0.8 k20 pres1.5': the settings the conversation sets, in the dialog's order."""
    return " ".join(f"{FIELDS[name][1]}{_short(settings[name])}" for name in REPLY_SETTINGS if name in settings)


def placeholders(model: dict | None, thinking: bool, max_tokens: int) -> dict[str, str]:
    """Each field's default in words, where it is known: the model's sampling (from its entry in the
    daemon's model list, once resident) and draft setting, the app's reply length, a new seed per reply."""
    model = model or {}
    defaults = {**model.get("sampling" if thinking else "sampling_no_thinking", {}), "max_tokens": max_tokens}
    if "draft" in model:
        defaults["draft"] = model["draft"]
    return {**{name: f"default {_short(value)}" for name, value in defaults.items() if name in FIELDS},
            "seed": "a new one per reply"}


def _value(text: str):
    """What the user typed, as the wire would carry it: an integer, else a number, else the text itself
    ("auto", or a slip that the check then names)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_settings(texts: dict[str, str]) -> tuple[dict, dict]:
    """(settings, errors) from the fields' texts: the checked values of the non-empty fields, and for each
    bad one what is wrong with it ("must be at least 0 and at most 100")."""
    settings, errors = {}, {}
    for name, text in texts.items():
        if text.strip():
            try:
                settings.update(reply_settings({name: _value(text.strip())}))
            except ProtocolError as exc:
                errors[name] = exc.message.partition(": ")[2]
    return settings, errors


class SettingsDialog(Dialog):
    """Answers (settings, thinking) when saved — thinking None where the model has no thinking mode —
    or None on Esc. `placeholders`: field -> its default in words, for the fields whose default is known."""

    BINDINGS = Dialog.BINDINGS + [Binding("ctrl+s", "save", "Save", show=False)]

    def __init__(self, settings: dict, thinking: bool | None, placeholders: dict[str, str]):
        super().__init__()
        self.settings, self.thinking, self.placeholders = settings, thinking, placeholders

    def compose(self):
        with VerticalScroll(classes="panel settings"):
            yield Static("Settings of this conversation (empty: the default)", classes="title")
            for name, (label, _) in FIELDS.items():
                with Horizontal(classes="setting"):
                    yield Label(label)
                    yield Input(str(self.settings.get(name, "")), id=f"setting-{name}",
                                placeholder=self.placeholders.get(name, "model default"))
                yield Static("", id=f"error-{name}", classes="setting-error")
            if self.thinking is not None:
                with Horizontal(classes="setting"):
                    yield Label("Thinking")
                    yield Checkbox("thinks before it answers", self.thinking, id="setting-thinking")
            yield Static("Enter or ctrl+s saves, Esc cancels", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def action_save(self) -> None:
        settings, errors = read_settings({name: self.query_one(f"#setting-{name}", Input).value for name in FIELDS})
        for name in FIELDS:
            self.query_one(f"#setting-{name}", Input).set_class(name in errors, "-invalid")
            error = self.query_one(f"#error-{name}", Static)
            error.update(errors.get(name, ""))
            error.display = name in errors
        if errors:
            self.query_one(f"#setting-{next(iter(errors))}", Input).focus()
            return
        self.dismiss((settings, self.query_one(Checkbox).value if self.thinking is not None else None))
