"""`train-head` on a tiny Llama trunk without a head: the prompt set and its held-out split, replies
chosen as the engine chooses them (greedy, penalised, sampled), and the head learning the trunk's
sampled replies, found by the loader, drafting losslessly, and a rerun resuming instead of starting
over. Seconds, not the real training."""

import json
import random

import pytest
import torch
from transformers import AutoTokenizer

from daemon.engine.reply import user_prompts
from daemon.engine.sampling import SamplingParams
from daemon.tiny.text_checkpoints import build_text_checkpoint
from daemon.tools.head_prompts import chat_prompts, head_prompts
from daemon.tools.train_head import (
    HEAD_RECORD,
    PROMPT_SET_SIZES,
    TrainSettings,
    held_out_prompts,
    kinds_and_prompts,
    prompt_sample,
    recorded_settings,
    reply_batch,
    train_head,
)
from daemon.weights.loader import load_model
from tests.helpers import chat_prompt, decode

SETTINGS = TrainSettings(prompts=240, held_out=24, max_new_tokens=32, generate_batch=48, steps=60, batch=16,
                         lr=3e-3, eval_every=20)
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1}  # written into the trunk's defaults


def test_batched_greedy_replies_equal_one_at_a_time(tiny_text):
    model = load_model(tiny_text["llama-tiny"], device="cpu")
    prompts = [chat_prompt(tiny_text["llama-tiny"], text) for text in ("Hi", "Tell me a long story about the sea")]
    stop = model.config.eos_token_ids[0]
    single = [decode(model, p, 16, [stop]) for p in prompts]
    assert reply_batch(model, prompts, 16, stop) == single


def test_batched_replies_choose_tokens_as_the_engine_does(tiny_text):
    """Penalties per row as the engine applies them (greedy: token for token), and sampling with the
    engine's draws: one prompt with a generator seeded s is the engine's reply with seed s."""
    model = load_model(tiny_text["llama-tiny"], device="cpu")
    texts = ("Hi", "Tell me a long story about the sea", "Write a Python function that adds two numbers.")
    prompts = [chat_prompt(tiny_text["llama-tiny"], text) for text in texts]
    stop = model.config.eos_token_ids[0]
    penalised = SamplingParams(repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2)
    single = [decode(model, p, 24, [stop], sampling=penalised) for p in prompts]
    assert reply_batch(model, prompts, 24, stop, penalised) == single
    assert single != [decode(model, p, 24, [stop]) for p in prompts], "the penalties must change something"

    sampled = SamplingParams(temperature=0.8, top_p=0.95, repetition_penalty=1.1)
    for seed, prompt in enumerate(prompts):
        engine = decode(model, prompt, 24, [stop], sampling=SamplingParams(**{**vars(sampled), "seed": seed}))
        assert reply_batch(model, [prompt], 24, stop, sampled, torch.Generator().manual_seed(seed)) == [engine]
    batch = reply_batch(model, prompts, 24, stop, sampled, torch.Generator().manual_seed(7))
    assert batch == reply_batch(model, prompts, 24, stop, sampled, torch.Generator().manual_seed(7))
    assert batch != reply_batch(model, prompts, 24, stop, sampled, torch.Generator().manual_seed(8))
    assert batch != reply_batch(model, prompts, 24, stop)


def test_the_prompt_set_covers_code_technical_lists_and_conversations():
    by_kind = head_prompts()
    assert list(by_kind) == ["chat", "code", "technical", "lists", "conversation"]
    assert sum(map(len, by_kind.values())) == PROMPT_SET_SIZES["v2"] == TrainSettings().prompts
    every = [json.dumps(p) for prompts in by_kind.values() for p in prompts]
    assert len(set(every)) == len(every), "no prompt twice"
    assert set(by_kind["chat"]) < set(chat_prompts()) and len(by_kind["chat"]) == len(chat_prompts()) // 3
    assert any("```python" in p for p in by_kind["code"]) and any("SQL" in p for p in by_kind["code"])
    for conversation in by_kind["conversation"]:
        assert [m["role"] for m in conversation] == ["user", "assistant", "user"]
    assert head_prompts() == by_kind, "fixed data, built the same way every time"


def test_the_sample_is_seeded_and_every_prefix_mixes_the_kinds():
    settings = TrainSettings()
    sample = kinds_and_prompts(settings)
    assert sample == kinds_and_prompts(TrainSettings()) != kinds_and_prompts(TrainSettings(seed=1))
    sizes = {kind: len(prompts) for kind, prompts in head_prompts().items()}
    for n in (16, settings.held_out, len(sample)):
        kinds = [kind for kind, _ in sample[:n]]
        for kind, size in sizes.items():  # every prefix within one prompt of its kind's share
            assert abs(kinds.count(kind) - n * size / len(sample)) <= 1, (n, kind)
    # the held-out part has code and multi-turn conversations beside chat, from its first prompts on
    assert {kind for kind, _ in sample[:8]} == set(sizes)
    assert prompt_sample(TrainSettings(prompts=100, held_out=10)) == [p for _, p in sample[:100]]


def test_old_records_keep_their_chat_only_held_out_split(tmp_path):
    """The first demo head's record has no prompt set: its held-out prompts are the v1 ones it never saw."""
    old = {"prompts": 1212, "held_out": 60, "max_new_tokens": 160, "generate_batch": 32, "steps": 800, "batch": 8,
           "lr": 0.001, "eval_every": 100, "seed": 0, "chain": 2}
    (tmp_path / HEAD_RECORD).write_text(json.dumps({"settings": old}))
    settings = recorded_settings({"settings": old})
    assert (settings.prompt_set, settings.replies) == ("v1", "greedy")
    texts = chat_prompts()
    random.Random(0).shuffle(texts)
    assert held_out_prompts(tmp_path) == texts[:60]
    assert held_out_prompts(tmp_path / "none") == prompt_sample(TrainSettings())[:60]


def test_a_conversation_renders_with_the_chat_template(tiny_text):
    tokenizer = AutoTokenizer.from_pretrained(tiny_text["llama-tiny"])
    conversation = head_prompts()["conversation"][0]
    [ids] = user_prompts(tokenizer, [conversation])
    assert ids == tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                                enable_thinking=False, return_dict=False)
    assert conversation[1]["content"] in tokenizer.decode(ids)
    assert user_prompts(tokenizer, ["Hi"]) == user_prompts(tokenizer, [[{"role": "user", "content": "Hi"}]])


def test_training_lowers_loss_raises_acceptance_and_resumes(tmp_path):
    checkpoint = build_text_checkpoint(tmp_path / "llama", "llama-tiny")
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    (checkpoint / "generation_config.json").write_text(json.dumps(generation | SAMPLING))
    work = tmp_path / "work"
    shorter = TrainSettings(**{**vars(SETTINGS), "steps": 20})
    first = train_head(checkpoint, checkpoint, work, shorter)
    assert [h["step"] for h in first["history"]] == [0, 20]
    record = train_head(checkpoint, checkpoint, work, SETTINGS)
    steps = [h["step"] for h in record["history"]]
    assert steps == [0, 20, 40, 60], "the rerun must resume from step 20"
    start, end = record["history"][0], record["history"][-1]
    # a random tiny trunk is hard to predict (its distributions are nearly flat), but the head must learn it
    assert end["loss"] < start["loss"] - 0.3
    assert end["acceptance"] > 1.5 * start["acceptance"]
    saved = json.loads((checkpoint / "mtp_head.json").read_text())
    assert saved["settings"]["seed"] == 0 and saved["trained_from"]["model_type"] == "llama"
    assert saved["settings"]["prompt_set"] == "v2" and saved["reply_sampling"] == SAMPLING
    held_out_kinds = [kind for kind, _ in kinds_and_prompts(SETTINGS)[:SETTINGS.held_out]]
    assert {k: v["sequences"] for k, v in saved["held_out_by_kind"].items()} == {
        kind: held_out_kinds.count(kind) for kind in dict.fromkeys(held_out_kinds)}
    # the replies trained on were sampled at those defaults, seeded per batch: the first batch's
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    prompts = user_prompts(tokenizer, prompt_sample(SETTINGS))[:SETTINGS.generate_batch]
    trunk = load_model(checkpoint, device="cpu")
    replies = torch.load(work / "replies.pt")
    assert replies[:SETTINGS.generate_batch] == reply_batch(
        trunk, prompts, SETTINGS.max_new_tokens, tokenizer.eos_token_id, SamplingParams(**SAMPLING),
        torch.Generator().manual_seed(0))
    assert replies[:SETTINGS.generate_batch] != reply_batch(trunk, prompts, SETTINGS.max_new_tokens,
                                                             tokenizer.eos_token_id)

    model = load_model(checkpoint, device="cpu")
    assert model.mtp is not None and model.mtp.fc.weight.dtype == torch.float32
    stop = model.config.eos_token_ids
    prompt = chat_prompt(checkpoint, "Write a Python function that adds two numbers.")
    plain = decode(model, prompt, 30, stop)
    assert decode(model, prompt, 30, stop, draft_k=3) == plain


def test_the_bfloat16_lm_head_loss_is_close_to_float32(tiny_text, tmp_path):
    from daemon.tools.train_head import head_loss, new_head, trunk_features

    model = load_model(tiny_text["llama-tiny"], device="cpu")
    prompts = [chat_prompt(tiny_text["llama-tiny"], text) for text in ("Hi", "Tell me a long story about the sea")]
    replies = reply_batch(model, prompts, 24, model.config.eos_token_ids[0])
    features = trunk_features(model, [(p + r, len(p)) for p, r in zip(prompts, replies)], tmp_path, lambda line: None)
    model.mtp = new_head(model, 0)
    exact, _ = head_loss(model, features, 2)
    rounded, _ = head_loss(model, features, 2, torch.bfloat16)
    assert rounded.dtype == torch.float32 and abs(rounded.item() - exact.item()) < 0.02 * exact.item()
    with pytest.raises(ValueError, match="lm_head_dtype"):
        TrainSettings(lm_head_dtype="float16")
