"""`train-head` on a tiny Llama trunk without a head: the head learns the trunk, is found by the loader,
drafts losslessly, and a rerun resumes instead of starting over. Seconds, not the real training."""

import json

import torch

from daemon.tiny.text_checkpoints import build_text_checkpoint
from daemon.tools.train_head import TrainSettings, greedy_batch, train_head
from daemon.weights.loader import load_model
from tests.helpers import chat_prompt, decode

SETTINGS = TrainSettings(prompts=240, held_out=24, max_new_tokens=32, generate_batch=48, steps=60, batch=16,
                         lr=3e-3, eval_every=20)


def test_batched_greedy_replies_equal_one_at_a_time(tiny_text):
    model = load_model(tiny_text["llama-tiny"], device="cpu")
    prompts = [chat_prompt(tiny_text["llama-tiny"], text) for text in ("Hi", "Tell me a long story about the sea")]
    stop = model.config.eos_token_ids[0]
    single = [decode(model, p, 16, [stop]) for p in prompts]
    assert greedy_batch(model, prompts, 16, stop) == single


def test_training_lowers_loss_raises_acceptance_and_resumes(tmp_path):
    checkpoint = build_text_checkpoint(tmp_path / "llama", "llama-tiny")
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

    model = load_model(checkpoint, device="cpu")
    assert model.mtp is not None and model.mtp.fc.weight.dtype == torch.float32
    stop = model.config.eos_token_ids
    prompt = chat_prompt(checkpoint, "Write a Python function that adds two numbers.")
    plain = decode(model, prompt, 30, stop)
    assert decode(model, prompt, 30, stop, draft_k=3) == plain
