"""Every action of the app in one table: its default keys, its title, what it does in words, its binding id.

The app builds its key bindings, the footer, the F1 screen and the command palette (title, and the
words as the palette's help line) from this table; the binding id is what config.toml's [keys] overrides.
Keys avoid what the message box (TextArea) already uses: ctrl+a/e/k/u/w/x/c/v/z/y.
"""

from __future__ import annotations

from typing import NamedTuple


class Action(NamedTuple):
    keys: str | None  # None: in the palette only
    action: str  # the app's action_<name>
    title: str
    help: str
    binding_id: str


ACTIONS = [
    Action("escape", "cancel", "Stop the reply (keeps what arrived)",
           "Stops the reply being written; the part that arrived is kept, marked interrupted", "cancel"),
    Action("ctrl+n", "new_conversation", "New conversation", "Starts an empty conversation", "new_conversation"),
    Action("ctrl+o", "switch_model", "Switch model",
           "Picks the model of this conversation; one that is not loaded is loaded", "switch_model"),
    Action("ctrl+r", "regenerate", "Regenerate the last reply",
           "Replaces the last reply with a new one (or answers a message left without one)", "regenerate"),
    Action("ctrl+g", "edit_message", "Edit a message and continue (in a copy)",
           "Edits the focused (or last) message of yours; the reply continues in a copy of the conversation",
           "edit_message"),
    Action("ctrl+t", "toggle_token_view", "Token view: draft-accepted vs verifier tokens",
           "Colours each reply by where its tokens came from: accepted MTP drafts or the full model",
           "token_view"),
    Action("f4", "copy_message", "Copy the reply (OSC 52)",
           "Copies the focused (or last) reply to the terminal's clipboard", "copy_message"),
    Action("f5", "copy_code", "Copy the reply's last code block (OSC 52)",
           "Copies the last code block of the focused (or last) reply to the terminal's clipboard", "copy_code"),
    Action("ctrl+f", "search", "Search all messages", "Finds words in every conversation; Enter opens a hit",
           "search"),
    Action("ctrl+b", "toggle_sidebar", "Show/hide the conversation list",
           "Gives the chat the whole width, or brings the list back", "toggle_sidebar"),
    Action("f2", "rename", "Rename the conversation", "Changes the title shown in the list", "rename"),
    Action("f3", "stats_panel", "Stats: conversation and daemon",
           "Token and acceptance totals of this conversation; the daemon's models, devices and caches",
           "stats_panel"),
    Action("f6", "system_prompt", "System prompt of the conversation",
           "Sets the instructions the model gets before this conversation", "system_prompt"),
    Action("f12", "settings", "Settings of the conversation: sampling, draft, length, seed",
           "Temperature, top-p/k, min-p, penalties, draft k, max tokens, seed and thinking for this "
           "conversation; empty fields take the model's defaults", "settings"),
    Action("f7", "toggle_thinking", "Thinking on/off for the conversation",
           "Lets the model think before it answers, or asks it to answer at once (models with a thinking mode)",
           "toggle_thinking"),
    Action("f8", "delete_conversation", "Delete the conversation",
           "Deletes this conversation and its messages, after asking", "delete_conversation"),
    Action("ctrl+s", "export_markdown", "Export the conversation as Markdown",
           "Writes this conversation to a .md file in the data dir's exports/", "export_markdown"),
    Action(None, "export_json", "Export the conversation as JSON",
           "Writes this conversation, with each reply's stats, to a .json file in exports/", "export_json"),
    Action("f9", "start_daemon", "Start mtpchatd", "Starts the daemon in the background when it is not running",
           "start_daemon"),
    Action("f1,question_mark", "help", "Help: keys and their binding ids",
           "Lists every key, and the id that overrides it under [keys] in config.toml", "help"),
]
FOOTER = {"cancel": "Stop", "new_conversation": "New", "switch_model": "Model", "token_view": "Tokens",
          "stats_panel": "Stats", "help": "Help"}  # binding id -> short label in the footer
