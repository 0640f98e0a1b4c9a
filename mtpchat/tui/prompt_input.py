"""The message box: multi-line, Enter sends, history on Up/Down.

A newline needs a key every terminal can send: shift+enter only reaches apps in terminals with the
kitty keyboard protocol, so ctrl+j (a plain line feed everywhere, tmux included) and alt+enter work
too. Up on the first line and Down on the last walk through earlier messages, as in a shell.
Every TextArea key works as usual except F6/F7 (select line/all), which the app takes.
"""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.widgets import TextArea

NEWLINE_KEYS = ("shift+enter", "ctrl+j", "alt+enter")
APP_KEYS = ("f6", "f7")  # TextArea's select line / select all; the app uses them (system prompt, thinking)


class PromptInput(TextArea, inherit_bindings=False):
    BINDINGS = [*ScrollView.BINDINGS, *(b for b in TextArea.BINDINGS if b.key not in APP_KEYS)]

    class Submitted(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    def __init__(self, history: list[str] | None = None, **kwargs):
        super().__init__(soft_wrap=True, show_line_numbers=False,
                         placeholder="Message — Enter sends, ctrl+j new line, Esc stops a reply, F1 keys", **kwargs)
        self.past_inputs = list(history or [])
        self._recall_index = len(self.past_inputs)
        self._draft = ""

    def remember(self, text: str) -> None:
        if not self.past_inputs or self.past_inputs[-1] != text:
            self.past_inputs.append(text)
        self._recall_index = len(self.past_inputs)

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            if self.text.strip():
                self.post_message(self.Submitted(self.text))
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        row = self.cursor_location[0]
        if event.key == "up" and row == 0 and self._recall_index > 0:
            self._recall(self._recall_index - 1)
            event.stop()
            event.prevent_default()
            return
        if event.key == "down" and row == self.document.line_count - 1 and self._recall_index < len(self.past_inputs):
            self._recall(self._recall_index + 1)
            event.stop()
            event.prevent_default()
            return
        await super()._on_key(event)

    def _recall(self, index: int) -> None:
        if self._recall_index == len(self.past_inputs):
            self._draft = self.text  # what was being typed comes back after the newest entry
        self._recall_index = index
        self.text = self.past_inputs[index] if index < len(self.past_inputs) else self._draft
        self.move_cursor(self.document.end)
