"""Pick the conversation's model from what the daemon knows: resident, loading (with progress),
unloaded or failed. A resident model is used at once; any other is loaded by the daemon (the app
sends `load`), and the stats bar shows its progress. The list follows the daemon's status live."""

from __future__ import annotations

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from mtpchat.status_text import model_state
from mtpchat.tui.screens import Dialog

STATE_STYLE = {"resident": "bold green", "loading": "yellow", "failed": "red", "unloaded": "dim"}


def model_label(model: dict, current: str | None) -> Text:
    label = Text("● " if model["name"] == current else "  ")
    label.append(f"{model['name']:<20}", style="bold")
    label.append(f"{model_state(model):<14}", style=STATE_STYLE.get(model.get("state"), ""))
    label.append(str(model.get("path", "")), style="dim")
    if model.get("default"):
        label.append("  (default)", style="dim")
    if model.get("error"):
        label.append(f"  {model['error']}", style="red")
    return label


class ModelSwitcher(Dialog):
    def __init__(self, models: list[dict], current: str | None):
        super().__init__()
        self.models, self.current = models, current

    def compose(self):
        with Vertical(classes="panel wide"):
            yield Static("Model for this conversation (Enter picks; non-resident models are loaded)", classes="title")
            yield OptionList(*self._options(), id="models")

    def _options(self) -> list[Option]:
        return [Option(model_label(m, self.current), id=m["name"]) for m in self.models]

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        names = [m["name"] for m in self.models]
        if self.current in names:
            options.highlighted = names.index(self.current)

    def refresh_models(self, models: list[dict]) -> None:
        """Called by the app on every daemon status: states and progress update in place."""
        if [m["name"] for m in models] != [m["name"] for m in self.models]:
            return  # the list changed shape; keep what the user is navigating
        self.models = models
        options = self.query_one(OptionList)
        for model in models:
            options.replace_option_prompt(model["name"], model_label(model, self.current))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
