"""Conversations on disk: one SQLite file in the data dir, so nothing said is ever lost.

The TUI writes the user's message before it is sent and the reply while it streams; a reply left
`streaming` by a process that died is marked `interrupted` when the store is next opened. The schema
version lives in `PRAGMA user_version`; MIGRATIONS[n] takes a database from version n to n + 1.
Messages are indexed with FTS5 for search across every conversation. The store knows nothing about
the daemon or the screen: it takes and returns plain values.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mtpchat.paths import data_dir, private_file

STATUSES = ("streaming", "complete", "interrupted", "error")

MIGRATIONS = [
    """
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        system_prompt TEXT NOT NULL DEFAULT '',
        model TEXT,
        thinking INTEGER NOT NULL DEFAULT 1,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        text TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('streaming', 'complete', 'interrupted', 'error')),
        model TEXT,
        stats TEXT,
        pieces TEXT,
        error TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL
    );
    CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
    CREATE VIRTUAL TABLE messages_fts USING fts5(text, content='messages', content_rowid='id');
    CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    CREATE TRIGGER messages_au AFTER UPDATE OF text ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text);
    END;
    """,
]


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    system_prompt: str
    model: str | None
    thinking: bool
    updated: float


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    role: str
    text: str
    status: str
    model: str | None
    stats: dict
    pieces: list  # [[text, drafted], ...] per generated token: the token view's colours
    error: str


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    message_id: int
    title: str
    snippet: str


def default_path() -> Path:
    return data_dir() / "conversations.sqlite3"


class Store:
    def __init__(self, path: Path | None = None):
        self.path = path or default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_file(self.path)  # SQLite gives the -wal and -shm files the database file's mode
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self.db.execute("UPDATE messages SET status = 'interrupted' WHERE status = 'streaming'")

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(f"{self.path} has schema version {version}, newer than this mtpchat "
                               f"({len(MIGRATIONS)}); upgrade mtpchat")
        for number in range(version, len(MIGRATIONS)):
            self.db.executescript(f"BEGIN; {MIGRATIONS[number]}; PRAGMA user_version = {number + 1}; COMMIT;")

    @contextmanager
    def _transaction(self):
        if self.db.in_transaction:  # nested: the outer one commits
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- conversations ---------------------------------------------------------------------------
    def create_conversation(self, title: str, model: str | None = None, system_prompt: str = "",
                            thinking: bool = True) -> int:
        now = time.time()
        cursor = self.db.execute(
            "INSERT INTO conversations (title, system_prompt, model, thinking, created, updated) "
            "VALUES (?, ?, ?, ?, ?, ?)", (title, system_prompt, model, int(thinking), now, now))
        return cursor.lastrowid

    def conversations(self) -> list[Conversation]:
        rows = self.db.execute("SELECT * FROM conversations ORDER BY updated DESC, id DESC")
        return [_conversation(row) for row in rows]

    def conversation(self, conversation_id: int) -> Conversation:
        row = self.db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise KeyError(f"no conversation {conversation_id}")
        return _conversation(row)

    def update_conversation(self, conversation_id: int, **fields) -> None:
        allowed = {"title", "system_prompt", "model", "thinking"}
        if not fields or not set(fields) <= allowed:
            raise ValueError(f"can only update {sorted(allowed)}, got {sorted(fields)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self.db.execute(f"UPDATE conversations SET {assignments}, updated = ? WHERE id = ?",
                        (*fields.values(), time.time(), conversation_id))

    def delete_conversation(self, conversation_id: int) -> None:
        self.db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # --- messages --------------------------------------------------------------------------------
    def add_message(self, conversation_id: int, role: str, text: str, status: str = "complete",
                    model: str | None = None) -> int:
        with self._transaction():
            cursor = self.db.execute(
                "INSERT INTO messages (conversation_id, role, text, status, model, created) VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, role, text, status, model, time.time()))
            self.db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), conversation_id))
        return cursor.lastrowid

    def update_message(self, message_id: int, *, text: str, status: str, stats: dict | None = None,
                       pieces: list | None = None, error: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self.db.execute("UPDATE messages SET text = ?, status = ?, stats = ?, pieces = ?, error = ? WHERE id = ?",
                        (text, status, json.dumps(stats or {}), json.dumps(pieces or []), error, message_id))

    def messages(self, conversation_id: int) -> list[Message]:
        rows = self.db.execute("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))
        return [_message(row) for row in rows]

    def delete_messages_from(self, conversation_id: int, message_id: int) -> None:
        """Drop a message and everything after it (regenerate replaces the last reply this way)."""
        self.db.execute("DELETE FROM messages WHERE conversation_id = ? AND id >= ?", (conversation_id, message_id))

    def fork(self, conversation_id: int, message_id: int, new_text: str) -> int:
        """A new conversation holding the messages before `message_id` and then `new_text` as the
        user's message: editing a past message keeps the original conversation as it was."""
        source = self.conversation(conversation_id)
        with self._transaction():
            fork = self.create_conversation(f"{source.title} (edited)", source.model, source.system_prompt,
                                            source.thinking)
            self.db.execute(
                "INSERT INTO messages (conversation_id, role, text, status, model, stats, pieces, error, created) "
                "SELECT ?, role, text, status, model, stats, pieces, error, created FROM messages "
                "WHERE conversation_id = ? AND id < ? ORDER BY id", (fork, conversation_id, message_id))
            self.add_message(fork, "user", new_text)
        return fork

    def user_inputs(self, limit: int = 500) -> list[str]:
        """The user's past messages, oldest first, without repeats: the input history."""
        rows = self.db.execute("SELECT text FROM messages WHERE role = 'user' GROUP BY text "
                               "ORDER BY max(id) DESC LIMIT ?", (limit,))
        return [row[0] for row in rows][::-1]

    # --- search and export -----------------------------------------------------------------------
    def search(self, query: str, limit: int = 50) -> list[SearchHit]:
        """Messages containing every word of `query` (prefix match on the last one), best first.
        Words are quoted, so FTS5 syntax characters in the query are plain text."""
        words = query.split()
        if not words:
            return []
        match = " ".join('"' + word.replace('"', '""') + '"' for word in words) + "*"
        rows = self.db.execute(
            "SELECT m.conversation_id, m.id, c.title, snippet(messages_fts, 0, '[', ']', '…', 12) AS snippet "
            "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid "
            "JOIN conversations c ON c.id = m.conversation_id "
            "WHERE messages_fts MATCH ? ORDER BY rank LIMIT ?", (match, limit))
        return [SearchHit(*row) for row in rows]

    def export_json(self, conversation_id: int) -> str:
        conversation = self.conversation(conversation_id)
        messages = [{"role": m.role, "text": m.text, "status": m.status, "model": m.model, "stats": m.stats,
                     "error": m.error} for m in self.messages(conversation_id)]
        return json.dumps({"title": conversation.title, "system_prompt": conversation.system_prompt,
                           "model": conversation.model, "thinking": conversation.thinking,
                           "messages": messages}, indent=2, ensure_ascii=False)

    def export_markdown(self, conversation_id: int) -> str:
        conversation = self.conversation(conversation_id)
        lines = [f"# {conversation.title}", ""]
        if conversation.system_prompt:
            lines += [f"> System: {conversation.system_prompt}", ""]
        for message in self.messages(conversation_id):
            heading = "User" if message.role == "user" else f"Assistant ({message.model or 'default model'})"
            if message.status != "complete":
                heading += f" — {message.status}"
            lines += [f"## {heading}", "", message.text, ""]
        return "\n".join(lines)


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(row["id"], row["title"], row["system_prompt"], row["model"], bool(row["thinking"]),
                        row["updated"])


def _message(row: sqlite3.Row) -> Message:
    return Message(row["id"], row["conversation_id"], row["role"], row["text"], row["status"], row["model"],
                   json.loads(row["stats"] or "{}"), json.loads(row["pieces"] or "[]"), row["error"])
