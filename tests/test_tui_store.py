"""The conversation store: migrations, never losing a streaming reply, search, export, forks, and a
file that is damaged, read-only, empty or on a full disk (a StoreError that names it and says what to do)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from mtpchat.store import MATCH_END, MATCH_START, MIGRATIONS, Store, StoreError


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "c.sqlite3")
    yield store
    store.close()


def test_schema_version_wal_and_refusal_of_a_newer_schema(tmp_path):
    path = tmp_path / "c.sqlite3"
    Store(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="upgrade mtpchat"):
        Store(path)


def test_a_version_1_store_gains_empty_settings_and_keeps_its_conversations(tmp_path):
    path = tmp_path / "c.sqlite3"
    db = sqlite3.connect(path)  # a store as the previous mtpchat left it: no settings column
    db.executescript(f"{MIGRATIONS[0]}; PRAGMA user_version = 1;")
    db.execute("INSERT INTO conversations (title, model, thinking, created, updated) VALUES ('old', 'moe', 0, 1, 1)")
    db.commit()
    db.close()
    store = Store(path)
    (old,) = store.conversations()
    assert (old.title, old.model, old.thinking, old.settings) == ("old", "moe", False, {})
    store.update_conversation(old.id, settings={"temperature": 0.7, "draft": "auto"})
    assert store.conversation(old.id).settings == {"temperature": 0.7, "draft": "auto"}
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 2
    store.close()


def test_a_reply_left_streaming_is_interrupted_on_reopen_with_its_text(tmp_path):
    path = tmp_path / "c.sqlite3"
    store = Store(path)
    conversation = store.create_conversation("t", "dense")
    store.add_message(conversation, "user", "hi")
    reply = store.add_message(conversation, "assistant", "", "streaming", "dense")
    store.update_message(reply, text="partial words", status="streaming", stats={"generated_tokens": 2},
                         pieces=[["partial", True], [" words", False]])
    store.db.close()  # the process dies here
    reopened = Store(path)
    last = reopened.messages(conversation)[-1]
    assert (last.text, last.status, last.stats, last.pieces) == (
        "partial words", "interrupted", {"generated_tokens": 2}, [["partial", True], [" words", False]])


def test_search_finds_words_across_conversations_and_treats_syntax_as_text(store):
    first = store.create_conversation("Oceans")
    store.add_message(first, "user", "Tell me about the deep sea")
    second = store.create_conversation("Code")
    store.add_message(second, "assistant", 'Use "quotes" AND (parentheses) in python')
    assert [(h.conversation_id, h.title) for h in store.search("deep")] == [(first, "Oceans")]
    assert f"{MATCH_START}deep{MATCH_END}" in store.search("deep sea")[0].snippet
    assert [h.conversation_id for h in store.search("pyth")] == [second]  # prefix on the last word
    assert [h.conversation_id for h in store.search('"quotes" AND (')] == [second]
    assert store.search("nothing-like-this") == [] and store.search("   ") == []
    message = store.messages(first)[0].id
    store.update_message(message, text="now about mountains", status="complete")
    assert store.search("deep") == [] and store.search("mountains")[0].message_id == message


def test_fork_keeps_the_original_and_delete_cascades(store):
    conversation = store.create_conversation("Trip", "moe", "be brief", thinking=False, settings={"top_k": 20})
    first = store.add_message(conversation, "user", "first question")
    store.add_message(conversation, "assistant", "first answer")
    second = store.add_message(conversation, "user", "second question")
    store.add_message(conversation, "assistant", "second answer")
    fork = store.fork(conversation, second, "edited question")
    assert [m.text for m in store.messages(fork)] == ["first question", "first answer", "edited question"]
    assert [m.text for m in store.messages(conversation)][-1] == "second answer"
    forked = store.conversation(fork)
    assert (forked.title, forked.model, forked.system_prompt, forked.thinking, forked.settings) == (
        "Trip (edited)", "moe", "be brief", False, {"top_k": 20})
    store.delete_messages_from(conversation, second)
    assert [m.id for m in store.messages(conversation)][0] == first and len(store.messages(conversation)) == 2
    store.delete_conversation(conversation)
    assert store.search("first answer")[0].conversation_id == fork  # only the fork's copy is left
    with pytest.raises(KeyError):
        store.conversation(conversation)


def test_export_markdown_and_json_carry_status_model_and_stats(store):
    conversation = store.create_conversation("Sea", "dense", "You are terse.")
    store.add_message(conversation, "user", "Describe the sea")
    reply = store.add_message(conversation, "assistant", "", "streaming", "dense")
    store.update_message(reply, text="Blue and wide", status="interrupted", stats={"decode_tok_s": 50.0},
                         error="cancelled")
    markdown = store.export_markdown(conversation)
    assert markdown.startswith("# Sea\n") and "> System: You are terse." in markdown
    assert "## Assistant (dense) — interrupted\n\nBlue and wide" in markdown
    exported = json.loads(store.export_json(conversation))
    assert exported["system_prompt"] == "You are terse." and exported["model"] == "dense"
    assert exported["settings"] == {}
    assert exported["messages"][1] == {"role": "assistant", "text": "Blue and wide", "status": "interrupted",
                                       "model": "dense", "stats": {"decode_tok_s": 50.0}, "error": "cancelled"}


def test_bad_updates_are_refused(store):
    conversation = store.create_conversation("x")
    message = store.add_message(conversation, "user", "hi")
    with pytest.raises(ValueError, match="status"):
        store.update_message(message, text="x", status="done")
    with pytest.raises(ValueError, match="can only update"):
        store.update_conversation(conversation, created=0)
    with pytest.raises(sqlite3.IntegrityError):
        store.add_message(conversation, "robot", "hi")
    assert store.messages(conversation)[0].text == "hi"


def test_input_history_is_oldest_first_without_repeats(store):
    conversation = store.create_conversation("x")
    for text in ("one", "two", "one", "three"):
        store.add_message(conversation, "user", text)
    store.add_message(conversation, "assistant", "not input")
    assert store.user_inputs() == ["two", "one", "three"]


def _filled(path):
    """A store file with enough messages to span many pages."""
    store = Store(path)
    conversation = store.create_conversation("t")
    for number in range(300):
        store.add_message(conversation, "user", f"message {number} " + "words " * 60)
    store.close()
    return path


def _overwrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


DAMAGE = {
    "garbage": lambda path: path.write_text("this is not a database " * 100),
    "header": lambda path: _overwrite(_filled(path), 0, b"X" * 16),
    "truncated": lambda path: os.truncate(_filled(path), os.path.getsize(path) // 2),
    "page": lambda path: _overwrite(_filled(path), 4096 * 3, b"\xff" * 512),
    "another program's database": lambda path: sqlite3.connect(path).executescript(
        "CREATE TABLE conversations (name TEXT); INSERT INTO conversations VALUES ('not ours');").close(),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_file_is_refused_at_open_with_its_path_and_what_to_do(tmp_path, damage):
    path = tmp_path / "c.sqlite3"
    DAMAGE[damage](path)
    with pytest.raises(StoreError) as refused:
        Store(path)
    message = str(refused.value)
    assert message.startswith(f"{path} is not a readable mtpchat database (")
    assert f"mv {path} {path}.broken" in message and f"sqlite3 {path} .recover" in message


def test_a_read_only_store_names_the_file_and_its_permissions(store):
    conversation = store.create_conversation("t")
    store.db.execute("PRAGMA query_only = ON")  # SQLite's own read-only refusal, even for root
    with pytest.raises(StoreError, match=f"^cannot write {store.path}: it is read-only .*check its permissions"):
        store.add_message(conversation, "user", "hi")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes a 0400 file anyway")
def test_a_read_only_file_is_refused_at_open(tmp_path):
    path = tmp_path / "c.sqlite3"
    Store(path).close()
    path.chmod(0o400)
    with pytest.raises(StoreError, match=f"^cannot write {path}: it is read-only"):
        Store(path)


def test_a_full_disk_rolls_the_new_conversation_back_and_says_so(store):
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL as soon as the file must grow
    full = f"^cannot write {store.path}: the disk holding {store.path} is full or failing"
    with pytest.raises(StoreError, match=full):
        store.start_conversation("t", None, "a long message " * 2000)
    assert store.conversations() == []  # no empty conversation is left behind


def test_a_zero_byte_file_becomes_a_new_store_with_a_notice(tmp_path):
    path = tmp_path / "c.sqlite3"
    fresh = Store(path)
    assert fresh.notice == "" and fresh.conversations() == []
    fresh.close()
    path.unlink()
    path.write_bytes(b"")
    emptied = Store(path)
    assert emptied.notice.startswith(f"{path} was an empty file (0 bytes)") and "backup" in emptied.notice
    assert emptied.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    emptied.close()
    assert Store(path).notice == ""  # once initialised it is an ordinary store


def test_the_tui_refuses_a_damaged_store_with_the_message_and_exit_code_1(tmp_path):
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "conversations.sqlite3").write_text("this is not a database " * 100)
    started = subprocess.run([sys.executable, "-m", "mtpchat.cli", "--endpoint", f"ipc://{tmp_path}/none.sock"],
                             capture_output=True, text=True, timeout=60, env=dict(os.environ, MTPCHAT_HOME=str(home)))
    assert started.returncode == 1 and "Traceback" not in started.stderr
    assert started.stderr.startswith(f"mtpchat: {home}/data/conversations.sqlite3 is not a readable mtpchat database")
