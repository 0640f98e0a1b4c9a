"""Conversations on disk: one SQLite file in the data dir, so nothing said is ever lost.

The TUI writes the user's message before it is sent and the reply while it streams; a reply left
`streaming` by a process that died is marked `interrupted` when the store is next opened. The schema
version lives in `PRAGMA user_version`; MIGRATIONS[n] takes a database from version n to n + 1.
Messages are indexed with FTS5 for search across every conversation. The store knows nothing about
the daemon or the screen: it takes and returns plain values.

Every failure of the file (damaged, read-only, disk full or failing, locked) is raised as `StoreError`,
whose message names the file and says what to do; a damaged file is found when the store opens
(`PRAGMA quick_check`), not at the first write. A bad value from the caller stays a sqlite3 error.
An existing 0-byte file is what SQLite calls an empty database: it is initialised like a new one, and
`Store.notice` says so, since it may be what is left of a file that held conversations.
"""

from __future__ import annotations

import errno
import functools
import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mtpchat.paths import data_dir, private_file

STATUSES = ("streaming", "complete", "interrupted", "error")

# What sqlite3 raises for a bad value or a bug of ours, not for a fault of the file.
_CALLER_ERRORS = (sqlite3.IntegrityError, sqlite3.ProgrammingError)

# Fragments of SQLite's own messages (sqlite3_errstr, stable across versions; Python 3.10 has no error
# codes on its exceptions) -> what went wrong.
_FAULTS = [("not a database", "damaged"), ("malformed", "damaged"), ("no such", "damaged"),
           ("already exists", "damaged"), ("readonly", "read-only"), ("permission", "read-only"),
           ("full", "disk"), ("i/o error", "disk"), ("unable to open", "cannot open"), ("locked", "locked")]

_ADVICE = {
    "damaged": "{path} is not a readable mtpchat database ({detail}). Move it aside (e.g. `mv {path} "
               "{path}.broken`) and mtpchat starts a new one; `sqlite3 {path} .recover` may save its contents.",
    "read-only": "cannot write {path}: it is read-only ({detail}); check its permissions and its folder's "
                 "(SQLite also writes {path}-wal and {path}-shm there)",
    "disk": "cannot write {path}: the disk holding {path} is full or failing ({detail}); free some space "
            "(`df -h {folder}`) or check the disk, then try again",
    "cannot open": "cannot open {path} ({detail}); check that it is a file you can read and write, in a "
                   "folder you can write",
    "locked": "{path} is locked by another program ({detail}); close it and try again",
    "other": "cannot use {path} ({detail}); check the file and the disk it is on",
}

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
    # a conversation's reply settings (mtpchat.protocol.reply_settings: sampling, draft, max_tokens, seed)
    # as a JSON map, only those the user set; thinking keeps its own column (F7 flips it on its own)
    "ALTER TABLE conversations ADD COLUMN settings TEXT NOT NULL DEFAULT '{}'",
]


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    system_prompt: str
    model: str | None
    thinking: bool
    updated: float
    settings: dict  # the reply settings the user set; the others are the model's (or the app's) defaults


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


MATCH_START, MATCH_END = "\x02", "\x03"  # around the matching words of a snippet: characters no message has


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    message_id: int
    title: str
    snippet: str  # the message around the match, the matching words between MATCH_START and MATCH_END


def default_path() -> Path:
    return data_dir() / "conversations.sqlite3"


class StoreError(Exception):
    """The conversation file cannot be read or written; the message names it and says what to do."""


def _explain(path: Path, exc: Exception) -> str:
    """What went wrong with the store at `path`, and what the user can do about it."""
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EROFS:
        fault = "read-only"
    elif isinstance(exc, OSError):
        fault = "disk" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO) else "cannot open"
    else:
        fault = next((fault for fragment, fault in _FAULTS if fragment in detail.lower()), "other")
    return _ADVICE[fault].format(path=path, folder=path.parent, detail=detail)


@contextmanager
def _faults_as_store_errors(path: Path):
    try:
        yield
    except _CALLER_ERRORS:
        raise
    except (sqlite3.DatabaseError, OSError) as exc:
        raise StoreError(_explain(path, exc)) from exc


def _guarded(method):
    """`method` of the Store, raising StoreError for any fault of the file."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        with _faults_as_store_errors(self.path):
            return method(self, *args, **kwargs)
    return guarded


class Store:
    def __init__(self, path: Path | None = None):
        self.path = path or default_path()
        self.notice = ""  # something the user should know about the file, found when it was opened
        with _faults_as_store_errors(self.path):
            self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size == 0:
            self.notice = (f"{self.path} was an empty file (0 bytes); mtpchat started a new conversation store "
                           f"in it. If it held conversations, they were lost before mtpchat opened it: "
                           f"look for a backup.")
        private_file(self.path)  # SQLite gives the -wal and -shm files the database file's mode
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        problem = self.db.execute("PRAGMA quick_check").fetchone()[0]
        if problem != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {problem}")
        self._migrate()
        self.db.execute("UPDATE messages SET status = 'interrupted' WHERE status = 'streaming'")

    @_guarded
    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(f"{self.path} has schema version {version}, newer than this mtpchat "
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
            if self.db.in_transaction:  # SQLite may have rolled back already (a full disk, an I/O error)
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- conversations ---------------------------------------------------------------------------
    @_guarded
    def create_conversation(self, title: str, model: str | None = None, system_prompt: str = "",
                            thinking: bool = True, settings: dict | None = None) -> int:
        now = time.time()
        cursor = self.db.execute(
            "INSERT INTO conversations (title, system_prompt, model, thinking, settings, created, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", (title, system_prompt, model, int(thinking), json.dumps(settings or {}),
                                             now, now))
        return cursor.lastrowid

    @_guarded
    def start_conversation(self, title: str, model: str | None, text: str) -> int:
        """A new conversation opened by the user's `text`, written in one transaction: a failed write
        leaves no empty conversation behind."""
        with self._transaction():
            conversation_id = self.create_conversation(title, model)
            self.add_message(conversation_id, "user", text)
        return conversation_id

    @_guarded
    def conversations(self) -> list[Conversation]:
        rows = self.db.execute("SELECT * FROM conversations ORDER BY updated DESC, id DESC")
        return [_conversation(row) for row in rows]

    @_guarded
    def conversation(self, conversation_id: int) -> Conversation:
        row = self.db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise KeyError(f"no conversation {conversation_id}")
        return _conversation(row)

    @_guarded
    def update_conversation(self, conversation_id: int, **fields) -> None:
        allowed = {"title", "system_prompt", "model", "thinking", "settings"}
        if not fields or not set(fields) <= allowed:
            raise ValueError(f"can only update {sorted(allowed)}, got {sorted(fields)}")
        if "settings" in fields:
            fields["settings"] = json.dumps(fields["settings"])
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self.db.execute(f"UPDATE conversations SET {assignments}, updated = ? WHERE id = ?",
                        (*fields.values(), time.time(), conversation_id))

    @_guarded
    def delete_conversation(self, conversation_id: int) -> None:
        self.db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # --- messages --------------------------------------------------------------------------------
    @_guarded
    def add_message(self, conversation_id: int, role: str, text: str, status: str = "complete",
                    model: str | None = None) -> int:
        with self._transaction():
            cursor = self.db.execute(
                "INSERT INTO messages (conversation_id, role, text, status, model, created) VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, role, text, status, model, time.time()))
            self.db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), conversation_id))
        return cursor.lastrowid

    @_guarded
    def update_message(self, message_id: int, *, text: str, status: str, stats: dict | None = None,
                       pieces: list | None = None, error: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self.db.execute("UPDATE messages SET text = ?, status = ?, stats = ?, pieces = ?, error = ? WHERE id = ?",
                        (text, status, json.dumps(stats or {}), json.dumps(pieces or []), error, message_id))

    @_guarded
    def messages(self, conversation_id: int) -> list[Message]:
        rows = self.db.execute("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))
        return [_message(row) for row in rows]

    @_guarded
    def delete_messages_from(self, conversation_id: int, message_id: int) -> None:
        """Drop a message and everything after it (regenerate replaces the last reply this way)."""
        self.db.execute("DELETE FROM messages WHERE conversation_id = ? AND id >= ?", (conversation_id, message_id))

    @_guarded
    def fork(self, conversation_id: int, message_id: int, new_text: str) -> int:
        """A new conversation holding the messages before `message_id` and then `new_text` as the
        user's message: editing a past message keeps the original conversation as it was."""
        source = self.conversation(conversation_id)
        with self._transaction():
            fork = self.create_conversation(f"{source.title} (edited)", source.model, source.system_prompt,
                                            source.thinking, source.settings)
            self.db.execute(
                "INSERT INTO messages (conversation_id, role, text, status, model, stats, pieces, error, created) "
                "SELECT ?, role, text, status, model, stats, pieces, error, created FROM messages "
                "WHERE conversation_id = ? AND id < ? ORDER BY id", (fork, conversation_id, message_id))
            self.add_message(fork, "user", new_text)
        return fork

    @_guarded
    def user_inputs(self, limit: int = 500) -> list[str]:
        """The user's past messages, oldest first, without repeats: the input history."""
        rows = self.db.execute("SELECT text FROM messages WHERE role = 'user' GROUP BY text "
                               "ORDER BY max(id) DESC LIMIT ?", (limit,))
        return [row[0] for row in rows][::-1]

    # --- search and export -----------------------------------------------------------------------
    @_guarded
    def search(self, query: str, limit: int = 50) -> list[SearchHit]:
        """Messages containing every word of `query` (prefix match on the last one), best first.
        Words are quoted, so FTS5 syntax characters in the query are plain text."""
        words = query.split()
        if not words:
            return []
        match = " ".join('"' + word.replace('"', '""') + '"' for word in words) + "*"
        rows = self.db.execute(
            "SELECT m.conversation_id, m.id, c.title, snippet(messages_fts, 0, ?, ?, '…', 12) AS snippet "
            "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid "
            "JOIN conversations c ON c.id = m.conversation_id "
            "WHERE messages_fts MATCH ? ORDER BY rank LIMIT ?", (MATCH_START, MATCH_END, match, limit))
        return [SearchHit(*row) for row in rows]

    @_guarded
    def export_json(self, conversation_id: int) -> str:
        conversation = self.conversation(conversation_id)
        messages = [{"role": m.role, "text": m.text, "status": m.status, "model": m.model, "stats": m.stats,
                     "error": m.error} for m in self.messages(conversation_id)]
        return json.dumps({"title": conversation.title, "system_prompt": conversation.system_prompt,
                           "model": conversation.model, "thinking": conversation.thinking,
                           "settings": conversation.settings, "messages": messages}, indent=2, ensure_ascii=False)

    @_guarded
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
                        row["updated"], json.loads(row["settings"]))


def _message(row: sqlite3.Row) -> Message:
    return Message(row["id"], row["conversation_id"], row["role"], row["text"], row["status"], row["model"],
                   json.loads(row["stats"] or "{}"), json.loads(row["pieces"] or "[]"), row["error"])
