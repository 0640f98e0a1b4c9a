"""`mtpchatd loops`: the loop rule on hand-made token sequences (loops and near misses), the held-out
prompts it asks, how looping replies are counted, and one run of the command on a tiny checkpoint whose
JSON is checked against the replies it returns (the random tiny model does not loop in a few tokens)."""

import json
import os
import statistics
import subprocess
import sys

from transformers import AutoTokenizer

from daemon.engine.decode_stats import DecodeStats
from daemon.serve.registry import ModelEntry
from daemon.tools import loop_rate
from daemon.tools.loop_rate import GREEDY, MAX_PERIOD, Loop, find_loop, measure_loops
from daemon.tools.train_head import HEAD_RECORD, TrainSettings, held_out_prompts, prompt_sample
from daemon.weights.sampling_defaults import ModelSampling, checkpoint_sampling
from mtpchat.config import ModelSettings


def block(period: int) -> list[int]:
    """`period` distinct token ids: a block with no shorter period inside it."""
    return list(range(100, 100 + period))


def test_a_run_of_one_token_loops_from_16_tokens_on():
    assert find_loop([7] * 16) == Loop(0, 1, 16)
    assert find_loop([1, 2, 3] + [7] * 20 + [4]) == Loop(3, 1, 20)
    assert find_loop([7] * 15) is None
    assert find_loop([7] * 15 + [8] + [7] * 15) is None  # two runs of 15 do not add up


def test_a_short_phrase_needs_copies_covering_16_tokens():
    phrase = [5, 6, 7]  # "a cat,"
    assert find_loop([1, 2] + phrase * 6 + [9]) == Loop(2, 3, 6)
    assert find_loop([1, 2] + phrase * 5 + [9]) is None  # 15 tokens
    assert find_loop(block(5) * 4) == Loop(0, 5, 4)
    assert find_loop(block(5) * 3 + block(4)) is None  # a partial fourth copy does not count
    assert find_loop(block(5) * 3 + block(5)[:4] + [0] + block(5) * 3) is None


def test_three_copies_are_needed_however_long_the_block():
    assert find_loop(block(10) * 2) is None
    assert find_loop(block(10) * 3) == Loop(0, 10, 3)
    assert find_loop(block(16) * 2) is None  # 32 tokens, but only two copies


def test_the_longest_period_is_32_tokens():
    assert find_loop([0] + block(MAX_PERIOD) * 3) == Loop(1, MAX_PERIOD, 3)
    assert find_loop(block(MAX_PERIOD) * 2 + block(MAX_PERIOD)[:-1]) is None
    assert find_loop(block(MAX_PERIOD + 1) * 3) is None


def test_the_earliest_loop_is_reported_with_its_shortest_period():
    sequence = list(range(40)) + [5, 6] * 10 + [3] * 30
    assert find_loop(sequence) == Loop(40, 2, 10)
    assert find_loop([3] * 40) == Loop(0, 1, 40)  # also periodic with 2, 3, ...: the shortest is reported


def test_text_without_repeats_does_not_loop():
    assert find_loop([]) is None
    assert find_loop(list(range(300))) is None
    twice_each = [t for i in range(40) for t in [5, 6, 7] * 2 + [1000 + i]]  # phrases said twice, never 3 times
    assert find_loop(twice_each) is None


def test_held_out_prompts_follow_the_heads_record(tmp_path):
    assert held_out_prompts(tmp_path) == prompt_sample(TrainSettings())[:TrainSettings().held_out]
    settings = {**TrainSettings().__dict__, "seed": 3, "prompts": 100, "held_out": 7}
    (tmp_path / HEAD_RECORD).write_text(json.dumps({"settings": settings}))
    held_out = held_out_prompts(tmp_path)
    assert held_out == prompt_sample(TrainSettings(seed=3, prompts=100, held_out=7))[:7]
    assert held_out != prompt_sample(TrainSettings())[:7]


def test_looping_replies_are_flagged_and_counted(tiny, monkeypatch):
    """With a stand-in decoder: greedy replies loop ("a cat," x 6), plain ones on seed 1 only, MTP ones never."""
    phrase = [11, 12, 13]
    asked = []

    def reply(entry, request):
        asked.append(request.messages)
        greedy = request.sampling == GREEDY
        looping = greedy or (request.draft == 0 and request.seed == 1)
        tokens = [1, 2] + phrase * 6 if looping else list(range(30, 50))
        return tokens, DecodeStats(generated_tokens=len(tokens), decode_s=0.1, finish_reason="length")

    monkeypatch.setattr(loop_rate, "_reply", reply)
    tokenizer = AutoTokenizer.from_pretrained(tiny["qwen3.6-dense-tiny"])
    entry = ModelEntry(ModelSettings("m", "m", sampling={"temperature": 0.5}), tokenizer=tokenizer,
                       checkpoint_sampling=ModelSampling())
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "second"}]
    report = measure_loops(entry, ["first", conversation], max_tokens=20, seeds=2)
    first = ({"role": "user", "content": "first"},)  # a text is one user turn, a conversation goes as it is
    assert asked[0] == first and [m for m in asked[1:] if m != first] == [tuple(conversation)] * 6
    assert report["loop_share"] == {"greedy": 1.0, "plain": 0.5, "mtp": 0.0}
    assert report["sampling_defaults"] == {"temperature": 0.5}
    assert report["by_prompt"][1]["greedy"][0]["loop"] == {"start": 2, "period": 3, "repeats": 6,
                                                          "text": tokenizer.decode(phrase)}
    assert [r["loop"] is None for r in report["by_prompt"][0]["plain"]] == [True, False]
    assert report["mtp_same_tokens_as_plain"] == 2  # seed 0 of each prompt


def test_loops_command_reports_what_its_replies_show(tiny, tmp_path):
    checkpoint = tiny["qwen3.6-dense-tiny"]
    env = dict(os.environ, MTPCHAT_HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "daemon", "loops", "--model", str(checkpoint), "--prompts", "2",
                           "--max-tokens", "24", "--seeds", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["prompts"] == 2 and report["seeds"] == 2 and report["draft"] == 2
    assert [p["prompt"] for p in report["by_prompt"]] == held_out_prompts(checkpoint)[:2]
    # the tiny Qwen3.6 checkpoint's defaults with thinking off: the Qwen card's instruct values, sampled
    assert report["sampling_defaults"] == checkpoint_sampling(checkpoint).defaults(thinking=False)
    assert report["sampling_defaults"]["temperature"] > 0

    every = {mode: [] for mode in ("greedy", "plain", "mtp")}
    for prompt in report["by_prompt"]:
        for mode in every:
            assert [reply["seed"] for reply in prompt[mode]] == [0, 1]
            for reply in prompt[mode]:
                assert 1 <= len(reply["tokens"]) <= 24
                loop = find_loop(reply["tokens"])
                flagged = reply["loop"]
                assert (flagged is None) == (loop is None)
                if loop is not None:
                    assert (flagged["start"], flagged["period"], flagged["repeats"]) == (loop.start, loop.period,
                                                                                      loop.repeats)
                every[mode].append(reply)
        greedy = [reply["tokens"] for reply in prompt["greedy"]]
        assert greedy[0] == greedy[1]  # the seed does not touch a greedy reply
        for plain, mtp in zip(prompt["plain"], prompt["mtp"], strict=True):
            assert plain["tokens"][0] == mtp["tokens"][0]  # both draw the first token from the same seed
            assert mtp["same_tokens_as_plain"] == (plain["tokens"] == mtp["tokens"])
    assert any(p["plain"][0]["tokens"] != p["plain"][1]["tokens"] for p in report["by_prompt"])  # seeds matter
    for mode, replies in every.items():
        assert report["loop_share"][mode] == sum(reply["loop"] is not None for reply in replies) / len(replies)
    assert report["mtp_same_tokens_as_plain"] == sum(reply["same_tokens_as_plain"] for reply in every["mtp"])

    timing = report["timing"]
    mtp = timing["mtp"]["2"]
    assert timing["plain"]["drafts"] == 0 and mtp["drafts"] > 0
    assert len(mtp["acceptance_per_position"]) == 2 and 1 <= mtp["mean_acceptance_length"] <= 3
    assert mtp["speedup"] == mtp["decode_tok_s"] / timing["plain"]["decode_tok_s"]
    ratios = [m["decode_tok_s"] / p["decode_tok_s"] for prompt in report["by_prompt"]
              for p, m in zip(prompt["plain"], prompt["mtp"], strict=True)]
    assert mtp["speedup_per_run"] == {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                      "runs": 4}
    assert set(report["machine"]) >= {"cpu", "flags", "load_average", "load_average_after"}
