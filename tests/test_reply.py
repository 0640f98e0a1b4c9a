"""Replies as text: stop strings end the reply exactly and never leak into the stream, with or
without MTP; streamed deltas always add up to the stored text."""

import dataclasses

import pytest
from transformers import AutoTokenizer

from daemon.engine.options import GenerationOptions
from daemon.engine.reply import ReplyResult, ReplyStream, render_prompt
from daemon.weights.loader import load_model

MESSAGES = [{"role": "user", "content": "Tell me a long story about the sea."}]


@pytest.fixture(scope="module")
def chat(tiny):
    path = tiny["qwen3.6-dense-tiny"]
    return load_model(path, device="cpu"), AutoTokenizer.from_pretrained(path)


def _reply(chat, **kwargs) -> tuple[str, ReplyResult]:
    model, tokenizer = chat
    options = GenerationOptions(max_tokens=48, **kwargs)
    stream = ReplyStream(model, tokenizer, render_prompt(tokenizer, MESSAGES), options)
    streamed = "".join(piece.text for piece in stream)
    return streamed, stream.result


@pytest.mark.parametrize("draft_k", [0, 3])
def test_stop_string_ends_the_reply_exactly(chat, draft_k):
    full, result = _reply(chat, draft_k=draft_k)
    assert full == result.text and result.finish_reason == "length"
    clean = [i for i in range(8, len(full) - 8) if "\ufffd" not in full[:i + 6]]
    assert clean, "the tiny model's reply has a clean stretch of text"
    stop = full[clean[0]:clean[0] + 5]
    streamed, stopped = _reply(chat, draft_k=draft_k, stop=(stop, "never appears"))
    assert stopped.text == full[:full.find(stop)]
    assert streamed == stopped.text and stop not in streamed
    assert stopped.finish_reason == "stop"


@pytest.mark.parametrize("draft_k", [0, 3])
def test_a_reply_ending_on_the_end_of_turn_token_says_stop(chat, monkeypatch, draft_k):
    """The usual ending: the model's own end-of-turn token (made here one the tiny model emits)."""
    model, tokenizer = chat
    _, free = _reply(chat, draft_k=draft_k)
    cut = next(i for i in range(4, len(free.token_ids)) if free.token_ids[i] not in free.token_ids[:i])
    eos = free.token_ids[cut]
    monkeypatch.setattr(model, "config", dataclasses.replace(model.config, eos_token_ids=(eos,)))
    streamed, result = _reply(chat, draft_k=draft_k)
    assert result.token_ids == free.token_ids[:cut] and streamed == result.text
    assert result.finish_reason == "stop" and result.stats.finish_reason == "stop"


def test_mtp_reply_equals_plain_reply(chat):
    plain, _ = _reply(chat)
    for k in (1, 2, 4):
        assert _reply(chat, draft_k=k)[0] == plain
    assert _reply(chat, draft_k=4, adaptive=True)[0] == plain
    assert _reply(chat, draft_k=2, draft_vocab=64)[0] == plain  # a model's configured draft_vocab


def test_incremental_text_equals_a_full_decode_at_every_token(chat):
    """Including multi-byte characters split across byte-level tokens."""
    model, tokenizer = chat
    text = "naïve café — 你好, 世界! ünïcödé ✓ " * 3
    ids = tokenizer.encode(text)
    stream = ReplyStream(model, tokenizer, [1, 2, 3], GenerationOptions(max_tokens=1))
    for n in range(1, len(ids) + 1):
        stream.result.token_ids = ids[:n]
        full = tokenizer.decode(ids[:n], skip_special_tokens=True)
        decoded = stream._decoded()
        if not full.endswith("\ufffd"):
            assert decoded == full, n
    assert stream._decoded() == text
