"""`mtpchatd bench` (also spelled `mtpchat bench`): plain vs MTP decoding measured side by side in one process, as JSON.

Three measurements, each a ratio taken within one run so machine noise cancels:
- checkpoint: the same prompts decoded plain and with MTP at each k, alternating per prompt; tok/s,
  speed-up, acceptance, per-position acceptance, prefill tok/s, TTFT, memory; MTP output is checked
  identical to plain (greedy).
- oracle: at a real model shape with random weights, an `OracleDrafter` (real MTP cost, known
  answer) errs at a set per-token rate, giving the speed-up the engine delivers at that acceptance.
- step cost: a (k+1)-token verify forward and a 1-token MTP draft step relative to a 1-token decode.
"""

from __future__ import annotations

import random
import statistics
import time

import torch

from daemon.engine.decode_stats import DecodeStats
from daemon.engine.generate import Generation
from daemon.engine.options import GenerationOptions
from daemon.engine.sampling import SamplingParams
from daemon.engine.step_functions import step_functions
from daemon.model.text_model import QwenModel
from daemon.tools.oracle_drafter import OracleDrafter
from daemon.tools.step_timing import alternating_medians, synchronize
from mtpchat.protocol import (
    ACCEPTANCE_PER_POSITION,
    ACCEPTANCE_RATE,
    ACCEPTED_TOKENS,
    DECODE_TOK_S,
    DRAFT_AUTO,
    DRAFTED_TOKENS,
    DRAFTS,
    MEAN_ACCEPTANCE_LENGTH,
    PEAK_MEMORY_BYTES,
    PREFILL_TOK_S,
    STATE_BYTES,
    TIME_TO_FIRST_TOKEN_S,
)

BENCH_PROMPTS = [
    "Explain how a hash map works, with a short Python example.",
    "Write a haiku about a GPU cooling fan, then explain its imagery.",
    "List five practical tips for writing clear commit messages.",
    "What is speculative decoding and why does it keep the output unchanged?",
]


def _run(model, prompt, max_tokens, k, sampling, drafter=None, draft_vocab=None) -> tuple[list[int], DecodeStats]:
    """k: a draft length, 0 for plain, or (DRAFT_AUTO, k_max): adaptive, up to the largest k measured."""
    adaptive = isinstance(k, tuple)
    options = GenerationOptions(max_tokens=max_tokens, sampling=sampling, draft_k=k[1] if adaptive else k,
                                adaptive=adaptive, draft_vocab=draft_vocab)
    generation = Generation(model, prompt, options, drafter=drafter)
    return generation.tokens(), generation.stats


def _variants(ks: list[int]) -> list:
    return [*ks, (DRAFT_AUTO, max(ks))]


def _key(variant) -> str:
    return DRAFT_AUTO if isinstance(variant, tuple) else str(variant)


def _column_sums(rows: list[list[int]]) -> list[int]:
    return [sum(row[j] for row in rows if j < len(row)) for j in range(max(map(len, rows), default=0))]


def summarize(runs: list[DecodeStats]) -> dict:
    """The runs' stats as one: counts summed, rates over the sums, TTFT averaged, memory at its peak."""
    combined = DecodeStats(
        prefill_tokens=sum(s.prefill_tokens for s in runs), prefill_s=sum(s.prefill_s for s in runs),
        drafts=sum(s.drafts for s in runs), drafted_tokens=sum(s.drafted_tokens for s in runs),
        accepted_tokens=sum(s.accepted_tokens for s in runs),
        accepted_per_position=_column_sums([s.accepted_per_position for s in runs]),
        drafted_per_position=_column_sums([s.drafted_per_position for s in runs]),
        peak_memory_bytes=max(s.peak_memory_bytes for s in runs), state_bytes=max(s.state_bytes for s in runs))
    decoded = sum(max(s.generated_tokens - 1, 0) for s in runs)  # each run's first token comes from prefill
    return {
        DECODE_TOK_S: decoded / sum(s.decode_s for s in runs),
        TIME_TO_FIRST_TOKEN_S: statistics.mean(s.time_to_first_token_s for s in runs),
        **combined.as_dict((PREFILL_TOK_S, DRAFTS, DRAFTED_TOKENS, ACCEPTED_TOKENS, ACCEPTANCE_RATE,
                            MEAN_ACCEPTANCE_LENGTH, ACCEPTANCE_PER_POSITION, PEAK_MEMORY_BYTES, STATE_BYTES)),
    }


def with_ratios(plain: dict, by_variant: dict) -> dict:
    for summary in by_variant.values():
        summary["speedup"] = summary[DECODE_TOK_S] / plain[DECODE_TOK_S]
        summary["extra_state_bytes"] = summary[STATE_BYTES] - plain[STATE_BYTES]
    return {"plain": plain, "mtp": {_key(v): summary for v, summary in by_variant.items()}}


def bench_checkpoint(model: QwenModel, prompts: list[list[int]], max_tokens: int, ks: list[int],
                     sampling: SamplingParams = SamplingParams(), draft_vocab: int | None = None) -> dict:
    _run(model, prompts[0], 4, max(ks), sampling)  # warm-up
    variants = _variants(ks)
    runs: dict = {v: [] for v in [0, *variants]}
    identical = True
    for prompt in prompts:  # alternate plain and every variant on each prompt
        plain_tokens, stats = _run(model, prompt, max_tokens, 0, sampling)
        runs[0].append(stats)
        for variant in variants:
            tokens, stats = _run(model, prompt, max_tokens, variant, sampling, draft_vocab=draft_vocab)
            runs[variant].append(stats)
            identical &= tokens == plain_tokens
    result = with_ratios(summarize(runs[0]), {v: summarize(runs[v]) for v in variants})
    if sampling.greedy:
        result["mtp_identical_to_plain"] = identical
    return result


def _verifier_truth(model: QwenModel, prompt: list[int], max_tokens: int, k: int, draft_vocab) -> list[int]:
    """prompt + the continuation a k-draft verify pass produces. With every draft wrong each token comes
    from a (k+1)-token forward, so it is what the verifier will pick again when the oracle drafts it;
    a plain 1-token decode can differ at bf16 near-ties (random weights have many)."""
    placeholder = prompt + [0] * (max_tokens + k + 1)
    wrong = OracleDrafter(model, len(placeholder), placeholder, errs=lambda step, slot: True, vocab=draft_vocab)
    return prompt + _run(model, prompt, max_tokens, k, SamplingParams(), wrong)[0]


def bench_oracle(model: QwenModel, prompt: list[int], max_tokens: int, ks: list[int], rates: list[float],
                 seed: int = 0, draft_vocab: int | None = None) -> dict:
    """Speed-ups at set per-token draft accuracies (measured acceptance reported beside them). With
    `draft_vocab` the MTP lm_head costs what the reduced vocabulary costs while the oracle's accuracy
    stays as set: the pure cost side."""
    greedy = SamplingParams()
    _run(model, prompt, 4, max(ks), greedy)  # warm-up
    variants = _variants(ks)
    truths = {v: _verifier_truth(model, prompt, max_tokens, v[1] if isinstance(v, tuple) else v, draft_vocab)
              for v in variants}
    results = {}
    for rate in rates:
        rng = random.Random(seed)
        plain_runs, by_variant = [], {}
        for variant in variants:
            plain_runs.append(_run(model, prompt, max_tokens, 0, greedy)[1])
            truth = truths[variant]
            drafter = OracleDrafter(model, len(truth) + max(ks) + 1, truth,
                                    errs=lambda step, slot: rng.random() >= rate, vocab=draft_vocab)
            by_variant[variant] = summarize([_run(model, prompt, max_tokens, variant, greedy, drafter)[1]])
        results[f"{rate:.2f}"] = with_ratios(summarize(plain_runs), by_variant)
    return results


def timed(fn, device: torch.device):
    """(fn(), seconds it took), with the device synchronised on both sides."""
    synchronize(device)
    started = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - started


@torch.inference_mode()
def step_costs(model: QwenModel, ks: list[int], context: int = 256, repeats: int = 20,
               draft_vocab: int | None = None) -> dict:
    """Seconds of a 1-token decode step, and the cost of the lm_head alone (one row), of a (k+1)-token
    verify and of one MTP draft step (full vocabulary, and `draft_vocab` if given) relative to it, at
    `context` tokens of history — through the model's step functions, so compiled ones when compiled."""
    device, steps = model.device, step_functions(model)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, context + max(ks) + 1), generator=torch.Generator().manual_seed(0)).to(device)
    cache = model.new_cache(ids.shape[1], max_steps=max(ks) + 1)
    _, hidden = model(ids[:, :context], cache, 0, last_only=True)
    mtp_cache = model.new_mtp_cache(ids.shape[1])

    def draft(vocab):
        return lambda: steps.mtp(ids[:, :1], hidden[:, -1:], mtp_cache, context, vocab=vocab)

    def verify(k):
        return lambda: steps.trunk(ids[:, context:context + k + 1], cache, context, keep_steps=True)

    forwards = {"decode": lambda: steps.trunk(ids[:, context:context + 1], cache, context),
                "lm_head": lambda: model.lm_head(hidden[:, -1:]), "draft": draft(None),
                **{str(k): verify(k) for k in ks}}
    if draft_vocab:
        forwards["draft_reduced"] = draft(draft_vocab)
    for forward in forwards.values():  # an untimed round first
        forward()
    medians = alternating_medians({name: lambda forward=forward: [timed(forward, device)[1]]
                                   for name, forward in forwards.items()}, repeats)
    one = medians["decode"]
    costs = {"context": context, "decode_step_s": one, "lm_head_vs_decode": medians["lm_head"] / one,
             "draft_step_vs_decode": medians["draft"] / one,
             "verify_vs_decode": {str(k): medians[str(k)] / one for k in ks}}
    if draft_vocab:
        costs["draft_step_vs_decode_reduced_vocab"] = medians["draft_reduced"] / one
    return costs


def bench_daemon_overhead(model: QwenModel, tokenizer, client, model_name: str, max_tokens: int, draft: int,
                          repeats: int = 5) -> dict:
    """Decode tok/s of the same greedy request in process and through a running daemon, alternating;
    timed from the first token (chunk) to the last, so prefill and connection setup are excluded."""
    from daemon.engine.reply import ReplyStream, render_prompt

    messages = [{"role": "user", "content": BENCH_PROMPTS[0]}]
    list(client.generate(model=model_name, messages=messages, max_tokens=4, draft=draft))  # waits until resident
    in_process, through_daemon = [], []
    for _ in range(repeats):
        stream = ReplyStream(model, tokenizer, render_prompt(tokenizer, messages),
                             GenerationOptions(max_tokens=max_tokens, draft_k=draft))
        first = next(stream)
        started = time.perf_counter()
        count = sum(1 for piece in stream if piece.token is not None) + (first.token is not None)
        in_process.append((count - 1) / (time.perf_counter() - started))
        replies = client.generate(model=model_name, messages=messages, max_tokens=max_tokens, draft=draft)
        next(replies)
        started = time.perf_counter()
        done = [r for r in replies][-1]
        through_daemon.append((len(done["token_ids"]) - 1) / (time.perf_counter() - started))
    in_tok_s, daemon_tok_s = statistics.median(in_process), statistics.median(through_daemon)
    return {"in_process_tok_s": in_tok_s, "daemon_tok_s": daemon_tok_s, "daemon_vs_in_process": daemon_tok_s / in_tok_s}
