"""`mtpchat` with no subcommand: the Textual chat app.

Layout: a top bar (connection state, conversation, model, thinking) that is always visible, the
conversation list with search on the left, the chat in the middle, the live MTP stats bar and the
message box at the bottom. Every action has a binding id (overridable under [keys] in config.toml),
appears in the command palette (ctrl+p) and on the F1 screen. The app owns no inference: it talks
to mtpchatd through the wire protocol and keeps everything said in the SQLite store.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Static

from mtpchat.client import DaemonClient, DaemonUnavailable
from mtpchat.store import Store
from mtpchat.tui.chat_view import ChatView
from mtpchat.tui.connection import ConnectionMonitor, DaemonState
from mtpchat.tui.conversation_actions import ConversationActions
from mtpchat.tui.model_switcher import ModelSwitcher
from mtpchat.tui.prompt_input import PromptInput
from mtpchat.tui.replying import FRAME_S, Replying
from mtpchat.tui.screens import HelpScreen, StatsScreen
from mtpchat.tui.settings import DEFAULT_THEME, load_settings, load_themes, save_theme
from mtpchat.tui.sidebar import Sidebar
from mtpchat.tui.stats_bar import StatsBar

# (keys, action, description, binding id); the palette lists every action, keys or not. Keys avoid
# what the message box (TextArea) already uses: ctrl+a/e/k/u/w/x/c/v/z/y.
ACTIONS = [
    ("escape", "cancel", "Stop the reply (keeps what arrived)", "cancel"),
    ("ctrl+n", "new_conversation", "New conversation", "new_conversation"),
    ("ctrl+o", "switch_model", "Switch model", "switch_model"),
    ("ctrl+r", "regenerate", "Regenerate the last reply", "regenerate"),
    ("ctrl+g", "edit_message", "Edit a message and continue (in a copy)", "edit_message"),
    ("ctrl+t", "toggle_token_view", "Token view: draft-accepted vs verifier tokens", "token_view"),
    ("f4", "copy_message", "Copy the reply (OSC 52)", "copy_message"),
    ("f5", "copy_code", "Copy the reply's last code block (OSC 52)", "copy_code"),
    ("ctrl+f", "search", "Search all messages", "search"),
    ("ctrl+b", "toggle_sidebar", "Show/hide the conversation list", "toggle_sidebar"),
    ("f2", "rename", "Rename the conversation", "rename"),
    ("f3", "stats_panel", "Stats: conversation and daemon", "stats_panel"),
    ("f6", "system_prompt", "System prompt of the conversation", "system_prompt"),
    ("f7", "toggle_thinking", "Thinking on/off for the conversation", "toggle_thinking"),
    ("f8", "delete_conversation", "Delete the conversation", "delete_conversation"),
    ("ctrl+s", "export_markdown", "Export the conversation as Markdown", "export_markdown"),
    (None, "export_json", "Export the conversation as JSON", "export_json"),
    ("f9", "start_daemon", "Start mtpchatd", "start_daemon"),
    ("f1,question_mark", "help", "Help: keys and their binding ids", "help"),
]
FOOTER = {"cancel": "Stop", "new_conversation": "New", "switch_model": "Model", "token_view": "Tokens",
          "stats_panel": "Stats", "help": "Help"}  # binding id -> short label in the footer


class MtpChatApp(ConversationActions, Replying, App):
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses elsewhere find it too
    TITLE = "mtpchat"
    BINDINGS = [Binding(keys, action, FOOTER.get(binding_id, description), show=binding_id in FOOTER,
                        id=binding_id, tooltip=description)
                for keys, action, description, binding_id in ACTIONS if keys]

    def __init__(self, endpoint: str | None = None, autostart: bool = True, store: Store | None = None,
                 max_tokens: int = 2048, connection_note: str = ""):
        super().__init__()
        self.endpoint, self.autostart, self.max_tokens = endpoint, autostart, max_tokens
        self.connection_note = connection_note  # e.g. "via ssh user@host"
        self.store = store or Store()
        self.settings = load_settings()
        self.token_view = False
        self.model_choice: str | None = None  # for new conversations: the last model picked
        self.daemon_status: dict | None = None
        self.connection = ("connecting", "connecting to mtpchatd…")
        self.monitor = ConnectionMonitor(self, endpoint, autostart)
        self.render_lags = []
        self.last_export: Path | None = None

    def compose(self):
        yield Static(id="topbar")
        with Horizontal():
            yield Sidebar(self.store, id="sidebar")
            with Vertical(id="main"):
                yield ChatView(id="chat")
                yield StatsBar(id="stats")
                yield PromptInput(self.store.user_inputs(), id="prompt")
        yield Footer()

    async def on_mount(self) -> None:
        themes, errors = load_themes()
        for theme in themes:
            self.register_theme(theme)
        for error in errors:
            self.notify(error, severity="error", timeout=10)
        wanted = self.settings.theme
        if wanted not in self.available_themes:
            fallback = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
            self.notify(f"theme {wanted!r} is not installed; using {fallback}", severity="warning")
            wanted = fallback
        self.theme = wanted
        self.theme_changed_signal.subscribe(self, lambda theme: save_theme(theme.name))
        unknown = set(self.settings.keys) - {binding_id for *_, binding_id in ACTIONS}
        if unknown:
            self.notify(f"[keys] in config.toml: unknown binding ids {sorted(unknown)}; see F1", severity="warning")
        self.set_keymap({k: v for k, v in self.settings.keys.items() if k not in unknown})
        self.set_interval(FRAME_S, self.pump_reply)
        conversations = self.store.conversations()
        await self.open_conversation(conversations[0].id if conversations else None)
        self.query_one(PromptInput).focus()
        self.monitor.start()

    async def on_unmount(self) -> None:
        self.monitor.stop()
        if self.reply is not None:  # leaving mid-reply: stop it and keep what arrived
            self.cancel_reply()
            self.save_reply(self.reply, "interrupted", "the app was closed")
        self.store.close()

    # --- daemon --------------------------------------------------------------------------------
    def on_daemon_state(self, event: DaemonState) -> None:
        if not self.screen_stack:  # a report that arrived while the app shuts down
            return
        self.connection = (event.state, event.detail)
        if event.status is not None:
            self.daemon_status = event.status
        if isinstance(self.screen, ModelSwitcher) and event.status:
            self.screen.refresh_models(event.status["models"])
        self.refresh_topbar()

    def daemon_ready(self) -> bool:
        """Whether a message can go out now; if not, the user is told why and keeps their text."""
        state, detail = self.connection
        if state == "connected":
            return True
        hint = f"; press {self._keys_of('start_daemon')} to start it" if state == "offline" else ""
        self.notify(f"{detail}{hint}. Your message is still in the box.", title="Not sent", severity="warning")
        return False

    def default_model(self) -> str | None:
        models = (self.daemon_status or {}).get("models", [])
        return next((m["name"] for m in models if m.get("default")), None)

    def refresh_topbar(self) -> None:
        state, detail = self.connection
        styles = {"connected": "green", "starting": "yellow", "connecting": "yellow", "offline": "red"}
        bar = Text()
        if state == "connected":
            status = self.daemon_status
            bar.append(f"● mtpchatd pid {status.get('pid', '?')}", style=styles[state])
        else:
            bar.append(f"○ {detail}", style=styles.get(state, ""))
            if state == "offline":
                bar.append(f" — press {self._keys_of('start_daemon')} to start it", style="dim")
        if self.connection_note:
            bar.append(f" {self.connection_note}", style="dim")
        model = self.conversation_model() or f"{self.default_model() or 'default'} (default)"
        bar.append("  │  ")
        bar.append(f"model {model}", style="bold")
        for entry in (self.daemon_status or {}).get("models", []) if state == "connected" else []:
            if entry.get("state") == "loading":
                bar.append(f"  loading {entry['name']} {entry.get('progress', 0):.0%}", style="yellow")
        if self.conversation_id is not None:
            conversation = self.store.conversation(self.conversation_id)
            bar.append(f"  │  {conversation.title}")
            bar.append("  thinking on" if conversation.thinking else "  thinking off", style="dim")
        self.query_one("#topbar", Static).update(bar)

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
        name = await self.push_screen_wait(ModelSwitcher(models, self.conversation_model()))
        if name is None:
            return
        self.model_choice = name
        if self.conversation_id is not None:
            self.store.update_conversation(self.conversation_id, model=name)
        state = next(m["state"] for m in models if m["name"] == name)
        if state != "resident":
            self._load_model(name)
        self.query_one(StatsBar).show_idle(name)
        self.refresh_topbar()

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

    # --- view ----------------------------------------------------------------------------------
    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        await self.send(event.text)

    async def on_sidebar_opened(self, event: Sidebar.Opened) -> None:
        if self.reply is not None:
            self.notify("A reply is streaming; Esc stops it", severity="warning")
            return
        await self.open_conversation(event.conversation_id)

    def action_cancel(self) -> None:
        if not self.cancel_reply():
            self.query_one(PromptInput).focus()

    def action_toggle_token_view(self) -> None:
        self.token_view = not self.token_view
        self.query_one(ChatView).set_token_view(self.token_view)
        self.notify("Token view: green = accepted MTP draft tokens, plain = verifier tokens"
                    if self.token_view else "Token view off")

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(Sidebar)
        sidebar.display = not sidebar.display

    def action_stats_panel(self) -> None:
        replies = [m.stats for m in self.store.messages(self.conversation_id)
                   if m.role == "assistant" and m.stats] if self.conversation_id is not None else []
        status = self.daemon_status if self.connection[0] == "connected" else None
        self.push_screen(StatsScreen(status, replies))

    def _keys_of(self, binding_id: str) -> str:
        default = next(keys for keys, *_, bid in ACTIONS if bid == binding_id)
        return self.settings.keys.get(binding_id, default) or "palette only"

    def action_help(self) -> None:
        self.push_screen(HelpScreen([(self._keys_of(bid), description, bid)
                                     for _, _, description, bid in ACTIONS]))

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        for _, action, description, _ in ACTIONS:
            yield SystemCommand(description, f"action: {action}", getattr(self, f"action_{action}"))
