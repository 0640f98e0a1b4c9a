"""The line at the top that is always visible: is mtpchatd there (and how to start it if not), which
model the conversation uses, which models are loading, and the conversation's title and thinking
(for a model whose chat template has a thinking mode)."""

from __future__ import annotations

from rich.text import Text

from mtpchat.status_text import model_state
from mtpchat.store import Conversation

STYLES = {"connected": "green", "starting": "yellow", "connecting": "yellow", "busy": "yellow", "offline": "red"}


def top_bar(connection: tuple[str, str], status: dict | None, note: str, model: str,
            conversation: Conversation | None, start_keys: str, thinking_mode: bool = True) -> Text:
    """connection: (state, detail) as the app's ConnectionMonitor reports it; model: what to call the
    conversation's model; start_keys: the keys of the start-daemon action, named when offline;
    thinking_mode: whether that model has a thinking mode (if not, the conversation's setting is not shown)."""
    state, detail = connection
    bar = Text()
    if state == "connected":
        bar.append(f"● mtpchatd pid {(status or {}).get('pid', '?')}", style=STYLES[state])
    else:
        bar.append(f"○ {detail}", style=STYLES.get(state, ""))
        if state == "offline":
            bar.append(f" — press {start_keys} to start it", style="dim")
    if note:
        bar.append(f" {note}", style="dim")
    bar.append("  │  ")
    bar.append(f"model {model}", style="bold")
    for entry in (status or {}).get("models", []) if state == "connected" else []:
        if entry.get("state") == "loading":
            bar.append(f"  {entry['name']} {model_state(entry)}", style="yellow")
    if conversation is not None:
        bar.append(f"  │  {conversation.title}")
        if thinking_mode:
            bar.append("  thinking on" if conversation.thinking else "  thinking off", style="dim")
    return bar
