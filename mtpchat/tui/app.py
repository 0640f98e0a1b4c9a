"""`mtpchat` with no subcommand: the Textual chat app.

Layout: a top bar (connection state, conversation, model, thinking) that is always visible, the
conversation list with search on the left, the chat in the middle, the live MTP stats bar and the
message box at the bottom. Every action (tui/actions.py) has a binding id (overridable under [keys]
in config.toml), appears in the command palette (ctrl+p) and on the F1 screen. The app owns no
inference: it talks to mtpchatd through the wire protocol and keeps everything said in the SQLite
store. A message sent while mtpchatd is still starting is shown and its reply asked for once it answers.

The app holds what is app-wide (connection, daemon status, keys, theme, dialogs); the chat column
(`Chat`, tui/chat.py) owns the conversation, the model choice, the reply in flight and the store, and
posts what changed; the app acts on the user's keys by asking it, and follows what it posts.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Static

from mtpchat.client import DaemonClient, DaemonUnavailable
from mtpchat.config import DEFAULT_THEME, load_config, save_theme
from mtpchat.store import Store
from mtpchat.tui.actions import ACTIONS, FOOTER
from mtpchat.tui.chat import Chat
from mtpchat.tui.chat_view import code_blocks
from mtpchat.tui.connection import ConnectionMonitor, DaemonState
from mtpchat.tui.model_switcher import ModelSwitcher
from mtpchat.tui.prompt_input import PromptInput
from mtpchat.tui.screens import ConfirmScreen, HelpScreen, StatsScreen, TextEditor, TextPrompt
from mtpchat.tui.settings_dialog import SettingsDialog, placeholders
from mtpchat.tui.sidebar import Sidebar
from mtpchat.tui.streaming import ReplyFeed, read_daemon_reply
from mtpchat.tui.themes import load_themes
from mtpchat.tui.top_bar import top_bar

ON_ITS_WAY = ("connecting", "starting", "busy")  # daemon states in which a message is queued, not refused


class MtpChatApp(App):
    CSS = (files("mtpchat.tui") / "app.tcss").read_text()  # package data: found in a wheel as in a checkout
    TITLE = "mtpchat"
    BINDINGS = [Binding(a.keys, a.action, FOOTER.get(a.binding_id, a.title), show=a.binding_id in FOOTER,
                        id=a.binding_id, tooltip=a.help) for a in ACTIONS if a.keys]

    def __init__(self, endpoint: str | None = None, autostart: bool = True, store: Store | None = None,
                 max_tokens: int = 2048, connection_note: str = ""):
        super().__init__()
        self.endpoint, self.autostart = endpoint, autostart
        self.connection_note = connection_note  # e.g. "via ssh user@host"
        self.config = load_config()
        self.chat = Chat(store or Store(), self.reply_source, max_tokens, id="main")
        self.daemon_status: dict | None = None
        self.connection = ("connecting", "connecting to mtpchatd…")
        self.monitor = ConnectionMonitor(self, endpoint, autostart)
        self.last_export: Path | None = None

    def reply_source(self, feed: ReplyFeed, fields: dict) -> None:
        """Where replies come from (run in a thread worker); tests and scripts/bench_tui.py stand in for it."""
        read_daemon_reply(feed, self.endpoint, fields)

    def compose(self):
        yield Static(id="topbar")
        with Horizontal():
            yield Sidebar(self.chat.store, id="sidebar")
            yield self.chat
        yield Footer()

    async def on_mount(self) -> None:
        themes, errors = load_themes()
        for theme in themes:
            self.register_theme(theme)
        for error in errors:
            self.notify(error, severity="error", timeout=10)
        if self.chat.store.notice:
            self.notify(self.chat.store.notice, severity="warning", timeout=30)
        wanted = self.config.theme
        if wanted not in self.available_themes:
            fallback = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
            self.notify(f"theme {wanted!r} is not installed; using {fallback}", severity="warning")
            wanted = fallback
        self.theme = wanted
        self.theme_changed_signal.subscribe(self, lambda theme: save_theme(theme.name))
        unknown = set(self.config.keys) - {a.binding_id for a in ACTIONS}
        if unknown:
            self.notify(f"[keys] in config.toml: unknown binding ids {sorted(unknown)}; see F1", severity="warning")
        self.set_keymap({k: v for k, v in self.config.keys.items() if k not in unknown})
        conversations = self.chat.store.conversations()
        await self.chat.open(conversations[0].id if conversations else None)
        self.query_one(PromptInput).focus()
        self.monitor.start()

    async def on_unmount(self) -> None:
        self.monitor.stop()

    # --- what the chat and the daemon report --------------------------------------------------
    def on_chat_changed(self, event: Chat.Changed) -> None:
        if not self.is_running:  # a change that arrived while the app shuts down
            return
        self.query_one(Sidebar).reload(self.chat.conversation_id)
        self.refresh_topbar()

    def on_chat_reply_finished(self, event: Chat.ReplyFinished) -> None:
        outcome = event.outcome
        if outcome.status == "error":
            self.notify(outcome.error, title="Reply failed", severity="error")
        elif outcome.error and outcome.error != "cancelled":
            self.notify(f"{outcome.error}; the partial reply is kept", title="Reply interrupted", severity="warning")

    async def on_daemon_state(self, event: DaemonState) -> None:
        if not self.is_running:  # a report that arrived while the app shuts down
            return
        self.connection = (event.state, event.detail)
        if event.state == "offline" and self.chat.queued is not None:
            self.chat.queued = None
            self.notify(f"{event.detail}; your message is kept: {self._keys_of('regenerate')} asks for its reply "
                        "once mtpchatd runs", title="Not sent", severity="warning")
        if event.status is not None:
            self.daemon_status = event.status
            self.chat.daemon_default = self.default_model()
        if isinstance(self.screen, ModelSwitcher) and event.status:
            self.screen.refresh_models(event.status["models"])
        self.refresh_topbar()
        if event.state == "connected":
            await self.chat.send_queued()

    def daemon_ready(self) -> bool:
        """Whether a request can go out now (tests with a stand-in reply source say yes)."""
        return self.connection[0] == "connected"

    def tell_not_sent(self) -> None:
        """Why nothing went out (the user keeps their text)."""
        state, detail = self.connection
        hint = f"; press {self._keys_of('start_daemon')} to start it" if state == "offline" else ""
        self.notify(f"{detail}{hint}. Your message is still in the box.", title="Not sent", severity="warning")

    def default_model(self) -> str | None:
        models = (self.daemon_status or {}).get("models", [])
        return next((m["name"] for m in models if m.get("default")), None)

    def thinking_mode(self) -> bool:
        """Whether the conversation's model has a thinking mode, as the daemon reports it once the model
        is resident (True until then, and for a model served by another engine: Qwen3.5/3.6 have one)."""
        name = self.chat.model() or self.default_model()
        models = (self.daemon_status or {}).get("models", [])
        return next((m.get("thinking_mode", True) for m in models if m["name"] == name), True)

    def refresh_topbar(self) -> None:
        model = self.chat.model() or f"{self.default_model() or 'default'} (default)"
        self.query_one("#topbar", Static).update(top_bar(self.connection, self.daemon_status, self.connection_note,
                                                         model, self.chat.conversation(),
                                                         self._keys_of("start_daemon"), self.thinking_mode()))

    def action_start_daemon(self) -> None:
        self.connection = ("starting", "starting mtpchatd…")
        self.refresh_topbar()
        self.monitor.start_daemon()

    @work(exclusive=True, group="dialog")
    async def action_switch_model(self) -> None:
        models = (self.daemon_status or {}).get("models")
        if self.connection[0] != "connected" or not models:
            self.notify("mtpchatd is not connected; the model list comes from it", severity="warning")
            return
        name = await self.push_screen_wait(ModelSwitcher(models, self.chat.model()))
        if name is None:
            return
        self.chat.pick_model(name)
        if next(m["state"] for m in models if m["name"] == name) != "resident":
            self._load_model(name)

    @work(thread=True)
    def _load_model(self, name: str) -> None:
        try:
            with DaemonClient(self.endpoint) as client:
                answer = client.request("load", model=name)
        except DaemonUnavailable as exc:
            answer = {"type": "error", "message": str(exc)}
        if answer.get("type") == "error":
            self.call_from_thread(self.notify, answer.get("message", "load failed"), severity="error")
        self.monitor.poke()

    # --- sending and replies ------------------------------------------------------------------
    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        if self.chat.replying():
            return
        if self.daemon_ready():
            await self.chat.send(event.text)
        elif self.connection[0] in ON_ITS_WAY:
            await self.chat.send(event.text, reply=False)
            self.notify("mtpchatd is not answering yet; the reply is asked for as soon as it does",
                        title="Queued")
        else:
            self.tell_not_sent()

    async def on_sidebar_opened(self, event: Sidebar.Opened) -> None:
        if not self.chat.replying():
            await self.chat.open(event.conversation_id, event.message_id)

    def action_cancel(self) -> None:
        if not self.chat.cancel_reply():
            self.query_one(PromptInput).focus()

    async def action_new_conversation(self) -> None:
        await self.chat.open(None)
        self.query_one(PromptInput).focus()

    async def action_regenerate(self) -> None:
        if self.chat.replying("Wait for the reply or press Esc"):
            return
        if self.chat.conversation_id is None:
            self.notify("Nothing to regenerate")
        elif self.daemon_ready():
            await self.chat.regenerate()
        else:
            self.tell_not_sent()

    @work(exclusive=True, group="dialog")
    async def action_edit_message(self) -> None:
        view = self.chat.focused_message("user")
        if view is None:
            self.notify("No message to edit")
            return
        if self.chat.replying("Wait for the reply or press Esc"):
            return
        if not self.daemon_ready():
            return self.tell_not_sent()
        text = await self.push_screen_wait(TextEditor("Edit the message; the reply continues in a copy "
                                                      "of this conversation (the original is kept)", view.text))
        if text and text.strip():
            await self.chat.fork(view.message_id, text)

    # --- the conversation ---------------------------------------------------------------------
    @work(exclusive=True, group="dialog")
    async def action_rename(self) -> None:
        conversation = self.chat.conversation()
        if conversation is None:
            return
        title = await self.push_screen_wait(TextPrompt("Title", conversation.title))
        if title and title.strip():
            self.chat.change(title=title.strip())

    @work(exclusive=True, group="dialog")
    async def action_system_prompt(self) -> None:
        conversation = self.chat.conversation()
        current = conversation.system_prompt if conversation is not None else ""
        text = await self.push_screen_wait(TextEditor("System prompt for this conversation (empty: none)", current))
        if text is not None:
            self.chat.change(system_prompt=text.strip())
            self.notify("System prompt saved")

    @work(exclusive=True, group="dialog")
    async def action_settings(self) -> None:
        conversation = self.chat.conversation()
        thinking = conversation.thinking if conversation is not None else True
        name = self.chat.model() or self.default_model()
        model = next((m for m in (self.daemon_status or {}).get("models", []) if m["name"] == name), None)
        answer = await self.push_screen_wait(SettingsDialog(
            conversation.settings if conversation is not None else {}, thinking if self.thinking_mode() else None,
            placeholders(model, thinking, self.chat.max_tokens)))
        if answer is not None:
            settings, thinking = answer
            self.chat.change(settings=settings, **({"thinking": thinking} if thinking is not None else {}))
            self.notify("Settings saved for this conversation")

    def action_toggle_thinking(self) -> None:
        if not self.thinking_mode():
            self.notify(f"{self.chat.model() or self.default_model()} has no thinking mode; nothing to switch")
            return
        conversation = self.chat.conversation()
        thinking = not conversation.thinking if conversation is not None else False
        self.chat.change(thinking=thinking)
        self.notify(f"Thinking {'on' if thinking else 'off'} for this conversation")

    @work(exclusive=True, group="dialog")
    async def action_delete_conversation(self) -> None:
        conversation = self.chat.conversation()
        if conversation is None:
            return
        if await self.push_screen_wait(ConfirmScreen(f"Delete “{conversation.title}” and all its messages?")):
            if self.chat.cancel_reply():
                self.notify("Stop the reply first (Esc), then delete", severity="warning")
            else:
                await self.chat.delete()

    def export(self, kind: str) -> None:
        if self.chat.conversation_id is None:
            self.notify("Nothing to export yet")
            return
        self.last_export = self.chat.export(kind)
        self.notify(str(self.last_export), title="Exported")

    def action_export_markdown(self) -> None:
        self.export("markdown")

    def action_export_json(self) -> None:
        self.export("json")

    def action_copy_message(self) -> None:
        view = self.chat.focused_message("assistant")
        if view is None:
            return self.notify("No reply to copy")
        self.copy_to_clipboard(view.text)
        self.notify(f"Copied {len(view.text)} characters (OSC 52)")

    def action_copy_code(self) -> None:
        view = self.chat.focused_message("assistant")
        blocks = code_blocks(view.text) if view is not None else []
        if not blocks:
            return self.notify("No code block in the reply")
        self.copy_to_clipboard(blocks[-1])
        self.notify(f"Copied the last code block ({len(blocks[-1].splitlines())} lines, OSC 52)")

    # --- view ---------------------------------------------------------------------------------
    def action_search(self) -> None:
        self.query_one(Sidebar).display = True
        self.query_one("#search").focus()

    def action_toggle_token_view(self) -> None:
        self.chat.set_token_view(not self.chat.token_view)
        self.notify("Token view: green = accepted MTP draft tokens, plain = verifier tokens"
                    if self.chat.token_view else "Token view off")

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(Sidebar)
        sidebar.display = not sidebar.display

    def action_stats_panel(self) -> None:
        replies = [m.stats for m in self.chat.store.messages(self.chat.conversation_id)
                   if m.role == "assistant" and m.stats] if self.chat.conversation_id is not None else []
        status = self.daemon_status if self.connection[0] == "connected" else None
        self.push_screen(StatsScreen(status, replies))

    def _keys_of(self, binding_id: str) -> str:
        default = next(a.keys for a in ACTIONS if a.binding_id == binding_id)
        return self.config.keys.get(binding_id, default) or "palette only"

    def action_help(self) -> None:
        self.push_screen(HelpScreen([(self._keys_of(a.binding_id), a.title, a.binding_id) for a in ACTIONS]))

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        for a in ACTIONS:
            keys = self._keys_of(a.binding_id)
            yield SystemCommand(a.title, f"{a.help} · {keys}", getattr(self, f"action_{a.action}"))
