"""What the user does to conversations and messages: new, open, rename, system prompt, thinking,
delete (confirmed), export, regenerate, edit-and-continue, copy.

Editing a past user message forks: a new conversation "<title> (edited)" holds the messages before
it and the edited text, and the reply continues there; the original conversation is kept unchanged.
Regenerate replaces the last reply (the replaced one is not kept).
"""

from __future__ import annotations

import re

from textual import work

from mtpchat.paths import data_dir
from mtpchat.tui.chat_view import ChatView, MessageView, code_blocks
from mtpchat.tui.prompt_input import PromptInput
from mtpchat.tui.screens import ConfirmScreen, TextPrompt
from mtpchat.tui.sidebar import Sidebar
from mtpchat.tui.stats_bar import StatsBar

TITLE_CHARS = 48


def title_from(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "New conversation"
    return line if len(line) <= TITLE_CHARS else line[:TITLE_CHARS - 1] + "…"


class ConversationActions:
    """Mixin for the app; every action here is also in the command palette."""

    conversation_id: int | None = None

    async def open_conversation(self, conversation_id: int | None) -> None:
        self.conversation_id = conversation_id
        messages = self.store.messages(conversation_id) if conversation_id is not None else []
        await self.query_one(ChatView).show(messages, self.token_view)
        self.query_one(Sidebar).reload(conversation_id)
        replies = [m for m in messages if m.role == "assistant" and m.stats]
        if replies:
            self.query_one(StatsBar).show(replies[-1].stats, replies[-1].model, streaming=False)
        else:
            self.query_one(StatsBar).show_idle(self.conversation_model())
        self.refresh_topbar()

    def conversation_model(self) -> str | None:
        if self.conversation_id is None:
            return self.model_choice
        return self.store.conversation(self.conversation_id).model

    async def send(self, text: str) -> None:
        if self.reply is not None:
            self.notify("A reply is streaming; Esc stops it", severity="warning")
            return
        if not self.daemon_ready():
            return
        if self.conversation_id is None:
            self.conversation_id = self.store.create_conversation(title_from(text), self.model_choice)
            self.query_one(Sidebar).reload(self.conversation_id)
        self.store.add_message(self.conversation_id, "user", text)  # stored before it is sent
        prompt = self.query_one(PromptInput)
        prompt.remember(text)
        prompt.text = ""
        await self.query_one(ChatView).add(self.store.messages(self.conversation_id)[-1], self.token_view)
        await self.start_reply(self.conversation_id)

    async def action_new_conversation(self) -> None:
        await self.open_conversation(None)
        self.query_one(PromptInput).focus()

    async def action_regenerate(self) -> None:
        if self.reply is not None or self.conversation_id is None:
            self.notify("Nothing to regenerate" if self.reply is None else "Wait for the reply or press Esc")
            return
        if not self.daemon_ready():
            return
        messages = self.store.messages(self.conversation_id)
        if messages and messages[-1].role == "assistant":
            self.store.delete_messages_from(self.conversation_id, messages[-1].id)
            await self.query_one(ChatView).views()[-1].remove()
        if not self.store.messages(self.conversation_id):
            return
        await self.start_reply(self.conversation_id)

    def _focused_message(self, role: str):
        """The focused message of this role, else the last one."""
        focused = self.focused
        if isinstance(focused, MessageView) and focused.role == role:
            return focused
        views = [v for v in self.query_one(ChatView).views() if v.role == role]
        return views[-1] if views else None

    @work(exclusive=True, group="dialog")
    async def action_edit_message(self) -> None:
        view = self._focused_message("user")
        if view is None or self.reply is not None:
            self.notify("No message to edit" if view is None else "Wait for the reply or press Esc")
            return
        if not self.daemon_ready():
            return
        text = await self.push_screen_wait(TextPrompt("Edit the message; the reply continues in a copy "
                                                      "of this conversation (the original is kept)", view.text))
        if not text or not text.strip():
            return
        fork = self.store.fork(self.conversation_id, view.message_id, text)
        await self.open_conversation(fork)
        await self.start_reply(fork)

    @work(exclusive=True, group="dialog")
    async def action_rename(self) -> None:
        if self.conversation_id is None:
            return
        title = await self.push_screen_wait(TextPrompt("Title", self.store.conversation(self.conversation_id).title))
        if title and title.strip():
            self.store.update_conversation(self.conversation_id, title=title.strip())
            self.query_one(Sidebar).reload(self.conversation_id)
            self.refresh_topbar()

    @work(exclusive=True, group="dialog")
    async def action_system_prompt(self) -> None:
        if self.conversation_id is None:
            self.conversation_id = self.store.create_conversation("New conversation", self.model_choice)
        current = self.store.conversation(self.conversation_id).system_prompt
        text = await self.push_screen_wait(TextPrompt("System prompt for this conversation (empty: none)", current))
        if text is not None:
            self.store.update_conversation(self.conversation_id, system_prompt=text.strip())
            self.query_one(Sidebar).reload(self.conversation_id)
            self.notify("System prompt saved")

    def action_toggle_thinking(self) -> None:
        if self.conversation_id is None:
            self.conversation_id = self.store.create_conversation("New conversation", self.model_choice)
        thinking = not self.store.conversation(self.conversation_id).thinking
        self.store.update_conversation(self.conversation_id, thinking=thinking)
        self.notify(f"Thinking {'on' if thinking else 'off'} for this conversation")
        self.refresh_topbar()

    @work(exclusive=True, group="dialog")
    async def action_delete_conversation(self) -> None:
        if self.conversation_id is None:
            return
        title = self.store.conversation(self.conversation_id).title
        if await self.push_screen_wait(ConfirmScreen(f"Delete “{title}” and all its messages?")):
            if self.reply is not None:
                self.cancel_reply()
                return self.notify("Stop the reply first (Esc), then delete", severity="warning")
            self.store.delete_conversation(self.conversation_id)
            remaining = self.store.conversations()
            await self.open_conversation(remaining[0].id if remaining else None)

    def export(self, kind: str) -> None:
        if self.conversation_id is None:
            self.notify("Nothing to export yet")
            return
        conversation = self.store.conversation(self.conversation_id)
        slug = re.sub(r"[^a-z0-9]+", "-", conversation.title.lower()).strip("-") or "conversation"
        path = data_dir() / "exports" / f"{conversation.id}-{slug}.{'md' if kind == 'markdown' else 'json'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = self.store.export_markdown(conversation.id) if kind == "markdown" else self.store.export_json(conversation.id)
        path.write_text(text)
        self.last_export = path
        self.notify(str(path), title="Exported")

    def action_export_markdown(self) -> None:
        self.export("markdown")

    def action_export_json(self) -> None:
        self.export("json")

    def action_copy_message(self) -> None:
        view = self._focused_message("assistant")
        if view is None:
            return self.notify("No reply to copy")
        self.copy_to_clipboard(view.text)
        self.notify(f"Copied {len(view.text)} characters (OSC 52)")

    def action_copy_code(self) -> None:
        view = self._focused_message("assistant")
        blocks = code_blocks(view.text) if view is not None else []
        if not blocks:
            return self.notify("No code block in the reply")
        self.copy_to_clipboard(blocks[-1])
        self.notify(f"Copied the last code block ({len(blocks[-1].splitlines())} lines, OSC 52)")

    def action_search(self) -> None:
        self.query_one(Sidebar).display = True
        self.query_one("#search").focus()
