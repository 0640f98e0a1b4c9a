"""The conversation list, with full-text search over every message above it.

Empty search: every conversation, newest first. Typing: the messages that match (FTS5, see
store.py), each with its conversation's title and the matching words highlighted. Down or Enter in
the search box moves to the results. Picking a conversation opens it; picking a hit opens its
conversation at the message that matched.
"""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, OptionList
from textual.widgets.option_list import Option

from mtpchat.store import MATCH_END, MATCH_START, SearchHit, Store


def hit_label(hit: SearchHit) -> Text:
    """The conversation's title, then the snippet on one line with its matching words highlighted (the
    text itself is never read as markup)."""
    label = Text.assemble((hit.title, "bold"), "\n")
    for index, piece in enumerate(hit.snippet.replace("\n", " ").split(MATCH_START)):
        matched, _, rest = piece.partition(MATCH_END) if index else ("", "", piece)
        label.append(matched, style="bold reverse")
        label.append(rest, style="dim")
    return label


class Sidebar(Vertical):
    BINDINGS = [Binding("down", "results", show=False)]  # the list takes Down itself once focused

    class Opened(Message):
        """A conversation was picked: at `message_id` when it was a search hit."""

        def __init__(self, conversation_id: int, message_id: int | None = None):
            super().__init__()
            self.conversation_id, self.message_id = conversation_id, message_id

    def __init__(self, store: Store, **kwargs):
        super().__init__(**kwargs)
        self.store = store
        self.current: int | None = None

    def compose(self):
        yield Input(placeholder="search all messages", id="search")
        yield OptionList(id="conversations")

    def on_mount(self) -> None:
        self.reload()

    def reload(self, current: int | None = None) -> None:
        if current is not None:
            self.current = current
        query = self.query_one("#search", Input).value
        options = self.query_one("#conversations", OptionList)
        options.clear_options()
        if query.strip():
            hits = self.store.search(query)
            options.add_options([Option(hit_label(hit), id=f"{hit.conversation_id}:{hit.message_id}")
                                 for hit in hits])
            if not hits:
                options.add_option(Option(Text("no message matches", style="dim"), disabled=True))
            return
        conversations = self.store.conversations()
        options.add_options([Option(Text(c.title, style="bold" if c.id == self.current else ""), id=str(c.id))
                             for c in conversations])
        ids = [c.id for c in conversations]
        if self.current in ids:
            options.highlighted = ids.index(self.current)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.reload()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_results()

    def action_results(self) -> None:
        options = self.query_one("#conversations", OptionList)
        if options.option_count:
            options.focus()
            options.highlighted = 0

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        conversation_id, _, message_id = event.option.id.partition(":")
        self.post_message(self.Opened(int(conversation_id), int(message_id) if message_id else None))
