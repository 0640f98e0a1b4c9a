"""The conversation state cache: follow-up turns resume from a saved engine state and prefill only
what is new, yet every reply is token-identical to a full prefill — over a long conversation with
thinking on and off, a cancelled turn, a stop string, an edited message, two interleaved
conversations, with MTP on and off, greedy and sampled, and under a budget that forces eviction."""

import pytest
from transformers import AutoTokenizer

from daemon.engine.options import GenerationOptions
from daemon.engine.reply import ReplyStream, render_prompt, turn_boundary
from daemon.engine.sampling import SamplingParams
from daemon.engine.state_cache import PromptReuse, StateCache
from daemon.weights.loader import load_model

TOPICS = ["the sea", "a lighthouse", "bread", "winter", "a fox", "trains", "rain", "the moon", "tea",
          "a map", "clocks", "bees"]
# (conversation, action, user text, thinking): "say" adds a turn, "cancel" stops the reply after two
# pieces and keeps them, "stop" ends the reply at a stop string, "edit" replaces the second user
# message (dropping what followed) and goes on from there
SCRIPT = [(c, "say", f"Tell me about {t}.", i % 2 == 0) for i, (c, t) in enumerate(zip("ab" * 6, TOPICS))]
SCRIPT[5] = ("b", "cancel", "Go on, at length.", True)
SCRIPT[8] = ("a", "stop", "Say more.", False)
SCRIPT += [("a", "edit", "Tell me about a river instead.", True), ("a", "say", "And then?", False),
           ("a", "say", "Why?", True), ("b", "say", "Thanks!", False)]


@pytest.fixture(scope="module")
def chat(tiny):
    path = tiny["qwen3.6-moe-tiny"]
    return load_model(path, device="cpu"), AutoTokenizer.from_pretrained(path)


def converse(chat, cache: StateCache | None, draft_k: int, sampling: SamplingParams) -> list[tuple]:
    """Play SCRIPT; per turn (reply token ids, finish reason, cached prompt tokens, prompt tokens)."""
    model, tokenizer = chat
    conversations: dict[str, list[dict]] = {"a": [], "b": []}
    turns = []
    for name, action, text, thinking in SCRIPT:
        messages = conversations[name]
        if action == "edit":
            second_user = [i for i, m in enumerate(messages) if m["role"] == "user"][1]
            del messages[second_user:]
        messages.append({"role": "user", "content": text})
        prompt = render_prompt(tokenizer, messages, thinking)
        reuse = PromptReuse(cache, "moe", turn_boundary(tokenizer, messages, prompt)) if cache else None
        options = GenerationOptions(max_tokens=8, draft_k=draft_k, sampling=sampling,
                                    stop=("e",) if action == "stop" else ())
        stream = ReplyStream(model, tokenizer, prompt, options, reuse)
        pieces = []
        for piece in stream:
            pieces.append(piece.text)
            if action == "cancel" and len(pieces) == 2:
                stream.close()
                break
        messages.append({"role": "assistant", "content": "".join(pieces)})
        stats = stream.result.stats
        turns.append((stream.result.token_ids[:len(pieces)] if action == "cancel" else stream.result.token_ids,
                      stream.result.finish_reason, stats.cached_tokens, stats.prompt_tokens))
    return turns


_RUNS: dict = {}


def played(chat, draft_k: int, sampling: SamplingParams) -> tuple[list, list, StateCache]:
    """SCRIPT without and with an ample cache (once per setting per module): (full, cached, cache)."""
    key = (draft_k, sampling)
    if key not in _RUNS:
        cache = StateCache(budget=1 << 30)
        _RUNS[key] = converse(chat, None, draft_k, sampling), converse(chat, cache, draft_k, sampling), cache
    return _RUNS[key]


@pytest.mark.parametrize("draft_k,sampling", [(0, SamplingParams()), (2, SamplingParams()),
                                              (3, SamplingParams(temperature=0.8, top_p=0.95, seed=7))],
                         ids=["plain", "mtp", "mtp-sampled"])
def test_cached_turns_are_token_identical_and_prefill_only_what_is_new(chat, draft_k, sampling):
    full, cached, cache = played(chat, draft_k, sampling)
    assert [turn[:2] for turn in cached] == [turn[:2] for turn in full]
    assert full[8][1] == "stop"  # the stop string did end that turn
    assert all(turn[2] == 0 for turn in full) and cached[0][2] == cached[1][2] == 0  # first turns: nothing yet
    for index, (_, _, reused, prompt) in enumerate(cached[2:], start=2):
        assert 0 < reused < prompt, f"turn {index} reused {reused} of {prompt} prompt tokens"
    edited = cached[len(SCRIPT) - 4]
    assert edited[2] < cached[len(SCRIPT) - 3][2]  # the edit resumed from an earlier turn's boundary
    assert cache.hits == len(SCRIPT) - 2


def test_a_tiny_budget_evicts_but_never_changes_a_reply(chat):
    full, _, ample = played(chat, 2, SamplingParams())
    per_state = ample.used()["cpu"] // ample.describe()["states"]
    tight = StateCache(budget=per_state * 2)
    cached = converse(chat, tight, 2, SamplingParams())
    assert [turn[:2] for turn in cached] == [turn[:2] for turn in full]
    assert tight.used()["cpu"] <= per_state * 2 < ample.used()["cpu"]
    assert 0 < tight.hits < ample.hits  # evicted states are misses, not wrong answers
