"""Every GPU-only check of the captured-step path in one run (< 8 minutes on one H200), as one JSON file.

Random weights made on the GPU, nothing downloaded; runs on torch >= 2.11 with CUDA (no
flash-linear-attention needed). Sections of the report:
- parity: bf16 eager steps vs CUDA-graph replays of the same steps (token ids of greedy decoding, k=0..3).
- fidelity: bf16 MTP decoding teacher-forced through the plain model — every emitted token is the
  argmax or within FIDELITY_GAP nats of it — and its exact-match rate against plain bf16 decoding.
- shapes: at the Qwen3.6-27B and 35B-A3B text shapes (full width; layers cut only by --layers):
  plain decode tok/s eager and captured, bandwidth utilisation, verify (k=1..4) and draft step cost
  relative to a 1-token step, oracle-drafter speed-ups at 60-90% acceptance, MTP's extra memory.
- serving: the daemon's own decoding (Generation: sampling, penalties and verification eager) through a
  graph lane (daemon/engine/graph_lane.py): its captured forwards against the same lane run uncaptured
  (token ids, greedy and sampled, plain and k=3) on the tiny model; at both shapes (inside `shapes`),
  served tok/s without a lane and with one at a 4k and a 32k context (its attention reads the whole context).
- kernels: whether fla / causal-conv1d imported (tests/test_kernels.py checks them where they do) and
  whether the Triton delta rule (daemon/model/fused_delta_rule.py) can run.
- fused_delta_rule: that kernel against the torch rule at Qwen3.6's head dims (decode; a 4-token verify
  with per-token states) within FUSED_BOUND, and captured decode and k=3 verify steps at the 27B shape
  (8 layers unless --layers-27b) with it and without (MTPCHAT_FUSED_DELTA_RULE=0), alternating.
- quantized: per method (int8; int4 at group 128, as the released W4A16 checkpoints; fp8 in 128x128
  blocks, as Qwen's FP8 releases, multiplied by cuBLAS's blockwise FP8 — first whether the device has it,
  daemon.model.fp8.check_fp8_matmul, else the reason): a quantized matmul against its reference (the
  dequantized weight; for fp8 the float32 reference form of the same FP8 codes) within MATMUL_BOUND
  (FP8_BOUND), eager vs captured greedy tokens of the tiny MoE model quantized (captured MoE steps take
  QuantizedExperts.slots), and at the 27B shape plain decode tok/s eager and captured, bandwidth
  utilisation and the k=3 verify cost.
Each check's peak GPU memory is kept; one that raises leaves its traceback in its place and the others
run on; none starts after --deadline-s, and the file is rewritten after each, so a call that runs out of
time still brings back what was measured.
`--dry-run` runs the same code on the CPU at tiny shapes in float32 in seconds (tests/test_device_check.py).

Usage: python scripts/device_check.py --out $OUT/device_check.json [--dry-run] [--layers-27b N] [--deadline-s S]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import statistics
import time
import traceback

import torch

from daemon.engine.generate import Generation
from daemon.engine.graph_lane import GraphLane
from daemon.engine.options import GenerationOptions
from daemon.engine.sampling import SamplingParams
from daemon.engine.step_runner import CapturedDecoder, StepRunner
from daemon.model import kernels
from daemon.model.config import TextConfig
from daemon.model.fp8 import check_fp8_matmul, fp8_activations, fp8_widened
from daemon.model.quantized import (
    KERNEL_DTYPE,
    quantized_kernels,
    quantized_linear,
    quantized_weights,
)
from daemon.tools.delta_rule_check import delta_rule_inputs, errors_against_torch
from daemon.tools.real_shapes import SHAPES, random_model, shape_config
from daemon.tools.step_timing import alternating_medians, synchronize, time_step
from daemon.weights.loader import default_dtype
from mtpchat.config import Quantization

HBM_BYTES_PER_S = 4.8e12  # H200 peak HBM bandwidth
# bf16 logits of magnitude up to 16 are stored in steps of 1/16; a 1-token decode and a (k+1)-token
# verify run different kernels, which move a logit by a few such steps: 0.25 nats is 4 steps. A real
# error (wrong position, state or mask) emits tokens several nats below the argmax.
FIDELITY_GAP = 0.25
RATES = (0.6, 0.7, 0.8, 0.9)
SAMPLED = SamplingParams(temperature=0.7, top_p=0.95, top_k=20, seed=3)  # Qwen3.6's card's chat defaults
# A quantized matmul's error against x @ dequantized weight, relative to sum |x|·|w| of its row: the
# kernels round their output to bfloat16 (2^-9) and may accumulate in bfloat16-rounded partial sums;
# 2^-7 leaves room for that and fails on a wrong packing, scale or zero (errors of order 1).
MATMUL_BOUND = 2.0**-7
# fp8 against the reference of its own codes: products of FP8 codes are exact, Hopper's FP8 tensor cores
# accumulate with ~14 bits before cuBLAS promotes each 128-input block (daemon.model.fp8.check_fp8_matmul)
FP8_BOUND = 2.0**-6
QUANTIZE_GROUP = 128
# the Triton delta rule against the torch one, float32 state: sums over k_dim = 128 terms in another order
# differ by ~100 ulps (1e-5 relative); a wrong decay, gate, stride or mask errs by O(1)
FUSED_BOUND = 1e-5
# the device tool's calls run at most 10 minutes, and a session has 15 of device time in all: checks start
# only in the first 6, so the report is written well inside one call and leaves time for a rerun
DEADLINE_S = 360.0
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
            vocab_size=1024, moe_intermediate_size=32, shared_expert_intermediate_size=32)
TINY_MOE = dict(num_experts=8, num_experts_per_tok=2)
# CUDA's FP8 layers take whole 128-input blocks: the tiny MoE widened so its trunk and experts have them
TINY_FP8 = dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=128, shared_expert_intermediate_size=128)


def config_for(shape: str, tiny: bool, layers: int | None, widths: dict | None = None) -> TextConfig:
    if tiny:
        moe = TINY_MOE if "num_experts" in SHAPES[shape] else {}
        return shape_config(shape, 4, overrides={**TINY, **moe, **(widths or {})})
    return shape_config(shape, layers)


def peaked_model(config: TextConfig, device, dtype) -> torch.nn.Module:
    """Random weights with an lm_head scaled so logits have std ~3 (random_model's 0.02 gives near-flat
    logits, where every token is a near-tie and greedy fidelity means nothing)."""
    model = random_model(config, device, dtype)
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0 / (0.02 * math.sqrt(config.hidden_size)))
    return model


def make_runner(model, capacity: int, k: int, captured: bool) -> StepRunner:
    """Captured: CUDA graphs on CUDA; on the CPU (dry run) the same runner replays eager steps."""
    return StepRunner(model, capacity, k, capture=captured and model.device.type == "cuda")


def greedy(runner: StepRunner, prompt: list[int], tokens: int) -> list[int]:
    return CapturedDecoder(runner, prompt).decode(tokens)


def first_difference(a: list[int], b: list[int], none):
    """The first position where two token lists differ; `none` where they agree over the shorter one."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), none)


def check_parity(model, prompt: list[int], tokens: int) -> dict:
    report = {}
    for k in range(4):
        eager = greedy(make_runner(model, len(prompt) + tokens + 8, k, False), prompt, tokens)
        captured = greedy(make_runner(model, len(prompt) + tokens + 8, k, True), prompt, tokens)
        report[f"k{k}"] = {"identical": eager == captured,
                           "first_difference": first_difference(eager, captured, None)}
    return report


def served(model, prompt: list[int], tokens: int, k: int = 0, sampling: SamplingParams = SamplingParams(),
           lane: GraphLane | None = None) -> dict:
    """A reply as the daemon decodes it, with `lane` as the model's graph lane (None: eager)."""
    model.graph_lane = lane
    generation = Generation(model, prompt, GenerationOptions(max_tokens=tokens, draft_k=k, sampling=sampling))
    out = generation.tokens()
    model.graph_lane = None
    return {"tokens": out, "tok_s": generation.stats.decode_tok_s}


def check_serving_parity(model, prompt: list[int], tokens: int) -> dict:
    capacity = len(prompt) + tokens + 8
    lanes = {"captured": GraphLane(model, capacity, 3),
             "uncaptured": GraphLane(model, capacity, 3, capture=False)}
    report = {}
    for label, k, sampling in (("k0", 0, SamplingParams()), ("k3", 3, SamplingParams()), ("k3_sampled", 3, SAMPLED)):
        runs = {name: served(model, prompt, tokens, k, sampling, lane)["tokens"] for name, lane in lanes.items()}
        eager = served(model, prompt, tokens, k, sampling)["tokens"]  # windowed attention: bf16 rounds apart
        report[label] = {"identical": runs["captured"] == runs["uncaptured"],
                         "eager_identical_prefix": first_difference(eager, runs["captured"], tokens)}
    return report


def serving_speed(model, prompt: list[int], tokens: int, contexts: tuple[int, ...]) -> dict:
    """Plain greedy replies served eagerly and through a captured lane made for each context."""
    report = {"eager_tok_s": served(model, prompt, tokens)["tok_s"]}
    for context in contexts:
        lane = GraphLane(model, context, 0)
        report[f"lane_{context // 1024}k_tok_s"] = served(model, prompt, tokens, lane=lane)["tok_s"]
        del lane
    return report


@torch.inference_mode()
def check_fidelity(model, prompt: list[int], tokens: int) -> dict:
    capacity = len(prompt) + tokens + 8
    plain = greedy(make_runner(model, capacity, 0, True), prompt, tokens)
    report = {"gap_nats": FIDELITY_GAP}
    for k in (1, 3):
        mtp = greedy(make_runner(model, capacity, k, True), prompt, tokens)
        ids = torch.tensor([prompt + mtp], device=model.device)
        logits, _ = model(ids, model.new_cache(ids.shape[1]), 0)
        logprobs = logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
        emitted = torch.tensor(mtp, device=model.device)
        gaps = logprobs.max(-1).values - logprobs.gather(-1, emitted[:, None])[:, 0]
        same = first_difference(plain, mtp, tokens)
        report[f"k{k}"] = {"all_within_gap": bool((gaps <= FIDELITY_GAP).all()),
                           "argmax_rate": float((gaps == 0).float().mean()), "max_gap": float(gaps.max()),
                           "exact_match_rate": sum(a == b for a, b in zip(plain, mtp)) / tokens,
                           "identical_prefix": same}
    return report


def bytes_per_token(model, cache_bytes: int) -> int:
    """Weights a plain decode step reads (no embedding table: one row; MoE: top-k of the experts; the
    quantized layers' codes and scales, which are buffers), plus its caches (a fixed-shape step reads
    the attention buffers' whole capacity)."""
    config, total = model.config, cache_bytes
    for name, param in (*model.named_parameters(), *model.named_buffers()):
        if name.startswith(("mtp.", "embed_tokens")):
            continue
        share = config.num_experts_per_tok / config.num_experts if ".mlp.experts." in name else 1.0
        total += param.numel() * param.element_size() * share
    return int(total)


def oracle(runner: StepRunner, prompt: list[int], truth: list[int] | None, rate: float, tokens: int) -> dict:
    """Speculative decoding whose drafts are `truth` (prompt + continuation), each wrong with chance
    1 - rate; truth None: every draft wrong (what the verifier alone picks, at this k's shapes). Each
    step runs the MTP draft chain too (as CapturedDecoder does), so its cost is in the speed-up."""
    rng, k = random.Random(0), runner.k
    runner.prefill(prompt)
    out, drafted, accepted = [int(runner.buffers.token)], 0, 0
    synchronize(runner.model.device)
    started = time.perf_counter()
    while len(out) < tokens + 1:
        position = len(prompt) + len(out)  # the index in prompt + out of the token after `token`
        if k > 1:  # the MTP chain's cost is paid as in real decoding; its drafts are then replaced
            runner.run("draft")
        drafts = []
        for slot in range(k):
            right = truth is not None and position + slot < len(truth) and rng.random() < rate
            drafts.append(truth[position + slot] if right else 0)
        runner.buffers.drafts[:k].copy_(torch.tensor(drafts))
        runner.run("verify")
        emitted = runner.read()
        drafted, accepted, out = drafted + k, accepted + len(emitted) - 1, out + emitted
    synchronize(runner.model.device)
    seconds = time.perf_counter() - started
    # the last step may emit past `tokens`: compared over the same length as the all-wrong run
    return {"tokens": prompt + out[:tokens + 1], "tok_s": (len(out) - 1) / seconds,
            "acceptance_rate": accepted / drafted}


def plain_decode(model, prompt: list[int], capacity: int, reps: int, report: dict) -> float:
    """Into `report`: 1-token decode tok/s eager and captured, bytes read a token and the bandwidth
    utilisation that makes; returns the captured step's seconds (the unit of the step costs)."""
    seconds = {}
    for label, captured in (("eager", False), ("captured", True)):
        runner = make_runner(model, capacity, 0, captured)
        seconds[label] = statistics.median(time_step(runner, "decode", prompt, reps))
        report[f"decode_tok_s_{label}"] = 1 / seconds[label]
        if captured:
            report["bytes_per_token"] = bytes_per_token(model, runner.cache.nbytes())
        del runner
    report["bandwidth_utilisation"] = report["bytes_per_token"] / seconds["captured"] / HBM_BYTES_PER_S
    return seconds["captured"]


@torch.inference_mode()
def check_shape(shape: str, tiny: bool, layers: int | None, device, dtype, tokens: int, reps: int) -> dict:
    config = config_for(shape, tiny, layers)
    model = random_model(config, device, dtype)
    report = {"layers": config.num_hidden_layers, "hidden": config.hidden_size}
    prompt = list(range(1, 65))
    capacity = len(prompt) + tokens + 16
    one_token = plain_decode(model, prompt, capacity, reps, report)  # seconds of a captured decode step
    report["verify_cost"], report["oracle"] = {}, {}
    for k in range(1, 5):
        runner = make_runner(model, capacity, k, True)
        report["verify_cost"][f"k{k}"] = statistics.median(time_step(runner, "verify", prompt, reps)) / one_token
        if k == 2:  # one chained MTP step
            report["draft_step_cost"] = statistics.median(time_step(runner, "draft", prompt, reps)) / one_token
        if k == 3:
            truth = oracle(runner, prompt, None, 0.0, tokens)["tokens"]
            for rate in RATES:
                run = oracle(runner, prompt, truth, rate, tokens)
                report["oracle"][f"{rate:.0%}"] = {"speedup": run["tok_s"] * one_token,
                                                   "acceptance_rate": run["acceptance_rate"],
                                                   "same_tokens": run["tokens"] == truth}
        del runner
    report["mtp_extra_bytes"] = {f"{n // 1024}k": mtp_extra_bytes(model, n) for n in (4096, 32768)}
    report["serving"] = serving_speed(model, prompt, min(tokens, 64), (capacity,) if tiny else (4096, 32768))
    return report


def fused_rule_error(length: int, heads: int, k_dim: int, device) -> float:
    """kernels.recurrent (the Triton kernel where it runs) against the torch rule on the same random inputs:
    the largest relative error of outputs, final state and (for more than one token) per-token states."""
    errors = errors_against_torch(kernels.recurrent, delta_rule_inputs(length, heads, k_dim, k_dim, device=device,
                                                                        seed=length), keep_steps=length > 1)
    return max(errors[what] for what in ("out", "state", "steps") if errors[what] is not None)


@torch.inference_mode()
def check_fused_delta_rule(dry: bool, layers: int | None, device, dtype, tokens: int, reps: int) -> dict:
    report = {"runs": kernels.has_fused_recurrent(torch.empty(0, device=device)), "bound": FUSED_BOUND}
    heads, k_dim = (4, 16) if dry else (48, 128)
    for length in (1, 4):
        report[f"error_{length}_tokens"] = error = fused_rule_error(length, heads, k_dim, device)
        report[f"within_bound_{length}_tokens"] = error <= FUSED_BOUND
    config = config_for("qwen3.6-27b", dry, layers or 8)
    model = random_model(config, device, dtype)
    prompt = list(range(1, 65))
    runners = {}
    try:  # captured with the kernel and without: the graphs keep the choice made while capturing
        for label, setting in (("fused", "1"), ("torch", "0")):
            os.environ["MTPCHAT_FUSED_DELTA_RULE"] = setting
            for k, step in ((0, "decode"), (3, "verify")):
                runners[f"{step}_{label}"] = (make_runner(model, len(prompt) + tokens + 16, k, True), step)
    finally:
        os.environ.pop("MTPCHAT_FUSED_DELTA_RULE")
    medians = alternating_medians({name: lambda runner=runner, step=step: time_step(runner, step, prompt, 1)
                                   for name, (runner, step) in runners.items()}, reps)
    report.update(layers=config.num_hidden_layers, step_ms={name: 1e3 * s for name, s in medians.items()},
                  verify_k3_cost={label: medians[f"verify_{label}"] / medians[f"decode_{label}"]
                                  for label in ("fused", "torch")})
    return report


def matmul_error(method: str, in_features: int, out_features: int, group: int, device) -> dict:
    """A quantized layer's output against x @ its dequantized weight (float32), for 1 and 4 rows; fp8's
    against its float32 reference form over the same FP8 codes (its activations are quantized too)."""
    generator = torch.Generator(device).manual_seed(0)
    with torch.device("meta"):
        layer = quantized_linear(method, in_features, out_features, group, kernels=quantized_kernels({str(device)}))
    layer.to_empty(device=device)
    weight = torch.randn(out_features, in_features, generator=generator, device=device) * 0.02
    layer.load(weight)
    reference, bound = layer.dequantized(), FP8_BOUND if method == "fp8" else MATMUL_BOUND
    report = {}
    for rows in (1, 4):
        x = torch.randn(rows, in_features, generator=generator, device=device).to(KERNEL_DTYPE).float()
        if method == "fp8":
            x = fp8_widened(*fp8_activations(x))
        scale = x.abs() @ reference.abs().t()
        error = ((layer(x) - x @ reference.t()).abs() / scale).max().item()
        report[f"rows{rows}"] = {"relative_error": error, "within_bound": error <= bound}
    return report


@torch.inference_mode()
def check_quantized(method: str, tiny: bool, layers: int | None, device, dtype, tokens: int, reps: int) -> dict:
    """One method: matmul error, eager-vs-captured tokens of the quantized tiny MoE, 27B-shape decode."""
    group = quantize_group(tiny)
    prompt = list(range(1, 17))
    config = config_for("qwen3.6-27b", tiny, layers)
    if method == "fp8" and device.type == "cuda":
        try:
            check_fp8_matmul(device)
        except ValueError as exc:
            return {"unsupported": str(exc)}
    entry = {"matmul": matmul_error(method, config.hidden_size, 2 * config.intermediate_size, group, device)}
    moe = random_model(config_for("qwen3.6-35b-a3b", True, None, TINY_FP8 if method == "fp8" else None), device,
                       dtype, quantization=Quantization(method, 32))
    entry["parity_moe"] = check_parity(moe, prompt, tokens)
    entry["quantized_layers_moe"] = sum(1 for _ in quantized_weights(moe))
    del moe
    model = random_model(config, device, dtype, quantization=Quantization(method, group))
    capacity = len(prompt) + tokens + 16
    captured = plain_decode(model, prompt, capacity, reps, entry)
    verify = make_runner(model, capacity, 3, True)
    entry["verify_cost_k3"] = statistics.median(time_step(verify, "verify", prompt, reps)) / captured
    return entry


def quantize_group(tiny: bool) -> int:
    return 32 if tiny else QUANTIZE_GROUP  # the tiny shapes' widths are multiples of 32 only


def mtp_extra_bytes(model, capacity: int, k: int = 3) -> dict:
    """What MTP adds at `capacity` positions: the head's weights, its KV cache, the DeltaNet step slots."""
    with torch.inference_mode():
        runner = StepRunner(model, capacity, k, capture=False)
    slots = sum(layer.conv_steps.nbytes + layer.state_steps.nbytes for layer in runner.cache.layers
                if hasattr(layer, "state_steps"))
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n.startswith("mtp."))
    return {"head_weights": weights, "mtp_kv_cache": runner.mtp_cache.nbytes(), "deltanet_step_slots": slots,
            "total": weights + runner.mtp_cache.nbytes() + slots}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, seconds")
    parser.add_argument("--layers-27b", type=int, help="cut Qwen3.6-27B to this many layers (multiple of 4)")
    parser.add_argument("--layers-35b", type=int, help="cut Qwen3.6-35B-A3B to this many layers")
    parser.add_argument("--deadline-s", type=float, default=DEADLINE_S,
                        help="start no check after this many seconds (the report keeps what was measured)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    if args.dry_run:
        torch.set_num_threads(1)  # tiny ops: threads only add waiting, worst on a loaded machine
    try:
        return run_checks(args)
    finally:
        torch.set_num_threads(threads)


class Sections:
    """Runs each check into its place in the report and rewrites the JSON file after it: a check that
    raises leaves its traceback there and the others run on; one that would start past the deadline is
    skipped, so the file holds every figure measured before the device call's time runs out."""

    def __init__(self, report: dict, out: str, deadline_s: float, device: torch.device):
        self.report, self.out, self.deadline_s, self.device = report, out, deadline_s, device
        self.started = time.perf_counter()

    def run(self, where: tuple[str, ...], check, *args) -> None:
        place = self.report
        for key in where[:-1]:
            place = place.setdefault(key, {})
        elapsed = time.perf_counter() - self.started
        if elapsed > self.deadline_s:
            place[where[-1]], outcome = {"skipped": f"past the {self.deadline_s:.0f} s deadline"}, "skipped"
        else:
            try:
                place[where[-1]], outcome = check(*args), "ok"
            except Exception:  # noqa: BLE001 -- recorded in the report; the remaining checks still run
                place[where[-1]], outcome = {"error": traceback.format_exc()}, "error"
                print(place[where[-1]]["error"], flush=True)
        if self.device.type == "cuda":
            self.report.setdefault("peak_memory_bytes", {})[".".join(where)] = torch.cuda.max_memory_allocated()
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.report["seconds"] = time.perf_counter() - self.started
        with open(self.out, "w") as out:
            json.dump(self.report, out, indent=1)
        print(f"[{self.report['seconds']:6.1f} s] {'.'.join(where)}: {outcome}", flush=True)


def run_checks(args) -> dict:
    dry = args.dry_run
    device = torch.device("cpu" if dry else "cuda")
    dtype = default_dtype(device)
    tokens, reps = (12, 2) if dry else (128, 20)
    report = {"device": "cpu (dry run)" if dry else torch.cuda.get_device_name(), "torch": torch.__version__,
              "kernels": {"fla": kernels.chunk_gated_delta_rule is not None,
                          "causal_conv1d": kernels.causal_conv1d_update is not None,
                          "fused_delta_rule": kernels.has_fused_recurrent(torch.empty(0, device=device))}}
    sections = Sections(report, args.out, args.deadline_s, device)
    tiny = peaked_model(config_for("qwen3.6-35b-a3b", True, None), device, dtype)
    prompt = list(range(1, 17))
    sections.run(("parity",), check_parity, tiny, prompt, tokens)
    sections.run(("fidelity",), check_fidelity, tiny, prompt, tokens)
    sections.run(("serving_parity",), check_serving_parity, tiny, prompt, tokens)
    del tiny
    sections.run(("fused_delta_rule",), check_fused_delta_rule, dry, args.layers_27b, device, dtype, tokens, reps)
    sections.run(("shapes", "qwen3.6-27b"), check_shape, "qwen3.6-27b", dry, args.layers_27b, device, dtype,
                 tokens, reps)
    report["quantized"] = {"matmul_bound": MATMUL_BOUND, "group": quantize_group(dry)}
    for method in ("int4", "int8", "fp8"):
        sections.run(("quantized", method), check_quantized, method, dry, args.layers_27b, device, dtype, tokens,
                     reps)
    sections.run(("shapes", "qwen3.6-35b-a3b"), check_shape, "qwen3.6-35b-a3b", dry, args.layers_35b, device,
                 dtype, tokens, reps)
    return report


if __name__ == "__main__":
    main()
