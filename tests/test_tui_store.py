"""The conversation store: migrations, never losing a streaming reply, search, export, forks."""

from __future__ import annotations

import json
import sqlite3

import pytest

from mtpchat.store import MIGRATIONS, Store


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
    with pytest.raises(RuntimeError, match="upgrade mtpchat"):
        Store(path)


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
    assert "[deep]" in store.search("deep sea")[0].snippet
    assert [h.conversation_id for h in store.search("pyth")] == [second]  # prefix on the last word
    assert [h.conversation_id for h in store.search('"quotes" AND (')] == [second]
    assert store.search("nothing-like-this") == [] and store.search("   ") == []
    message = store.messages(first)[0].id
    store.update_message(message, text="now about mountains", status="complete")
    assert store.search("deep") == [] and store.search("mountains")[0].message_id == message


def test_fork_keeps_the_original_and_delete_cascades(store):
    conversation = store.create_conversation("Trip", "moe", "be brief", thinking=False)
    first = store.add_message(conversation, "user", "first question")
    store.add_message(conversation, "assistant", "first answer")
    second = store.add_message(conversation, "user", "second question")
    store.add_message(conversation, "assistant", "second answer")
    fork = store.fork(conversation, second, "edited question")
    assert [m.text for m in store.messages(fork)] == ["first question", "first answer", "edited question"]
    assert [m.text for m in store.messages(conversation)][-1] == "second answer"
    forked = store.conversation(fork)
    assert (forked.title, forked.model, forked.system_prompt, forked.thinking) == ("Trip (edited)", "moe",
                                                                                    "be brief", False)
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
