"""`mtpchatd bench`, `quality`, `loops` and `train-head`: the engine-side commands, run in this process.

`mtpchat bench` / `mtpchat train-head` are the same commands spelled on the client, which hands them
here without importing torch. Both load a model by configured name (the built-in `demo` and `tiny`
included), checkpoint directory or repo id, as the daemon would.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from mtpchat.client import DaemonClient, start_daemon
from mtpchat.config import (
    BUILTIN,
    DEFAULT_CONTEXT,
    DEFAULT_QUANTIZE_GROUP,
    DTYPE_NAMES,
    ModelSettings,
    Quantization,
    load_config,
)
from mtpchat.machine import machine
from mtpchat.protocol import MAX_DRAFT, QUANTIZE_CHOICES


def _comma_list(parse, low: float, high: float, what: str):
    """An argparse type: a comma list of `parse`d values within [low, high], or a usage error saying so."""
    def values(text: str) -> list:
        try:
            parsed = [parse(part) for part in text.split(",")]
        except ValueError:
            parsed = []
        if not parsed or not all(low <= value <= high for value in parsed):
            raise argparse.ArgumentTypeError(f"{text!r}: want a comma list of {what} from {low:g} to {high:g}")
        return parsed
    return values


def _progress(text: str) -> None:
    print(text, end="", file=sys.stderr, flush=True)


def _model_settings(model: str | None) -> ModelSettings:
    """The settings of `--model` (default: the default model): a configured model's (the built-in `demo`
    and `tiny` included); anything else is a directory or repo id, with the settings the daemon gives one."""
    config = load_config()
    return config.models.get(model or config.default) or ModelSettings(model, model, load_at_start=False)


def _local_checkpoint(model: str | None, settings: ModelSettings | None = None):
    """What an in-process command (bench, train-head, ...) loads for `--model` (or given its `settings`):
    the settings' path, a built-in one made on first use."""
    from daemon.weights.builtin_models import builtin_checkpoint

    path = (settings or _model_settings(model)).path
    return builtin_checkpoint(path, progress=_progress) if path.startswith(BUILTIN) else path


def _quantizations(args: argparse.Namespace) -> list[Quantization]:
    """What `bench --quantize a,b` measures: each method with --quantize-group / --quantize-mtp (default
    group 32, the head as the trunk); without --quantize, the configured model's own setting."""
    if not args.quantize:
        return [_model_settings(args.model).quantization]
    try:
        return [Quantization(method, args.quantize_group, args.quantize_mtp) for method in args.quantize.split(",")]
    except ValueError as exc:
        raise SystemExit(f"mtpchatd: {exc}") from None


def _graph_lane(model, args: argparse.Namespace, capacity: int) -> bool:
    """On a GPU, the graph lane the daemon would capture (daemon/engine/graph_lane.py), so the bench
    measures how the daemon decodes; whether there is one."""
    if model.device.type != "cuda" or args.no_cuda_graphs:
        return False
    from daemon.engine.graph_lane import install_graph_lane

    install_graph_lane(model, capacity, args.draft_vocab)
    return True


def _bench(args: argparse.Namespace) -> int:
    import torch

    from daemon.engine.reply import user_prompts
    from daemon.tools import bench
    from daemon.tools.bandwidth import layer_bandwidth, machine_bandwidth
    from daemon.tools.real_shapes import random_model, shape_config
    from daemon.weights.chat_model import load_chat_model
    from daemon.weights.loader import DTYPES, default_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    ks = args.draft
    report = {"device": str(device), "machine": machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "max_tokens": args.max_tokens,
              "draft_k": ks, "draft_vocab": args.draft_vocab}
    runs = []  # (quantization, report part), one per --quantize method
    if args.shape:
        # random weights at a real shape; bf16 by default, where a (k+1)-token verify reads weights once
        dtype = DTYPES[args.dtype or "bfloat16"]
        config = shape_config(args.shape, args.layers, args.vocab)
        prompt = torch.randint(0, config.vocab_size, (args.prompt_tokens,),
                               generator=torch.Generator().manual_seed(0)).tolist()
        rates = args.oracle
        report.update(model=args.shape, layers=config.num_hidden_layers, vocab=config.vocab_size)
        for quantization in _quantizations(args) if args.quantize else [Quantization()]:
            model = random_model(config, device, dtype, quantization=quantization)
            report["cuda_graphs"] = _graph_lane(model, args, args.prompt_tokens + args.max_tokens + 2 * MAX_DRAFT)
            runs.append((quantization, {
                "step_cost": bench.step_costs(model, ks, draft_vocab=args.draft_vocab),
                "layer_bandwidth": layer_bandwidth(model),
                "oracle": bench.bench_oracle(model, prompt, args.max_tokens, ks, rates, draft_vocab=args.draft_vocab)}))
            del model
    else:
        checkpoint = _local_checkpoint(args.model)
        for quantization in _quantizations(args):
            model, tokenizer = load_chat_model(checkpoint, device=str(device),
                                               dtype=DTYPES[args.dtype] if args.dtype else None,
                                               quantization=quantization)
            prompts = user_prompts(tokenizer, args.prompt or bench.BENCH_PROMPTS[:args.prompts])
            report["cuda_graphs"] = _graph_lane(model, args, min(DEFAULT_CONTEXT, model.config.max_position_embeddings))
            report.update(model=str(checkpoint), prompts=len(prompts), compile=args.compile)
            compiled = {}
            if args.compile:
                from daemon.engine.step_functions import compile_steps

                started = time.perf_counter()
                compile_steps(model, max(ks), (None, args.draft_vocab) if args.draft_vocab else (None,))
                compiled = {"compile_s": round(time.perf_counter() - started, 1)}
            if args.conversation:
                from daemon.tools.bench_conversation import bench_conversation

                turns = args.conversation
                runs.append((quantization, {"conversation": bench_conversation(model, tokenizer, turns,
                                                                              args.max_tokens, max(ks))}))
                continue
            part = compiled | {"checkpoint": bench.bench_checkpoint(model, prompts, args.max_tokens, ks)}
            if args.draft_vocab:
                part["checkpoint_draft_vocab"] = bench.bench_checkpoint(model, prompts, args.max_tokens, ks,
                                                                        draft_vocab=args.draft_vocab)
            part["step_cost"] = bench.step_costs(model, ks, draft_vocab=args.draft_vocab)
            part["layer_bandwidth"] = layer_bandwidth(model)
            if args.daemon:
                name = str(args.model) if args.model else None
                start_daemon(args.endpoint, progress=_progress if sys.stderr.isatty() else lambda text: None)
                with DaemonClient(args.endpoint) as client:
                    model_name = name or client.request("models")["models"][0]["name"]
                    part["daemon_overhead"] = bench.bench_daemon_overhead(model, tokenizer, client, model_name,
                                                                          args.max_tokens, max(ks))
            runs.append((quantization, part))
    if len(runs) == 1:
        report.update(runs[0][1], quantize=runs[0][0].describe())
    else:  # several: one part per quantization, side by side
        report["by_quantize"] = {quantization.describe(): part for quantization, part in runs}
    report["dtype"] = str(dtype if args.shape else model.dtype).removeprefix("torch.")
    if device.type == "cpu":
        report["machine_bandwidth"] = machine_bandwidth()
    print(json.dumps(report, indent=2))
    return 0


def _quality(args: argparse.Namespace) -> int:
    """Each --quantize method against the unquantized model on the same held-out replies (JSON out)."""
    import torch

    from daemon.engine.reply import user_prompts
    from daemon.tools.quant_quality import compare, reference_replies, reply_log_probs
    from daemon.tools.train_head import chat_prompts
    from daemon.weights.chat_model import load_chat_model

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = _local_checkpoint(args.model)
    reference, tokenizer = load_chat_model(checkpoint, device="cpu")
    every = chat_prompts()
    texts = every[::max(1, len(every) // args.prompts)][:args.prompts]  # spread over every topic and task
    prompts = user_prompts(tokenizer, texts)
    sequences = reference_replies(reference, prompts, args.max_tokens)
    expected = [reply_log_probs(reference, seq, len(p)) for seq, p in zip(sequences, prompts, strict=True)]
    report = {"model": str(checkpoint), "prompts": len(prompts), "max_tokens": args.max_tokens, "by_quantize": {}}
    for quantization in _quantizations(args):
        model, _ = load_chat_model(checkpoint, device="cpu", quantization=quantization)
        got = [reply_log_probs(model, seq, len(p)) for seq, p in zip(sequences, prompts, strict=True)]
        report["by_quantize"][quantization.describe()] = compare(expected, got)
    print(json.dumps(report, indent=2))
    return 0


def _loops(args: argparse.Namespace) -> int:
    """Loop share greedy vs the model's sampling defaults, and MTP under those defaults (JSON out)."""
    import torch

    from daemon.serve.registry import ModelEntry
    from daemon.tools.loop_rate import measure_loops
    from daemon.tools.train_head import held_out_prompts
    from daemon.weights.chat_model import load_chat_model
    from daemon.weights.checkpoint import resolve_checkpoint
    from daemon.weights.loader import DTYPES
    from daemon.weights.sampling_defaults import checkpoint_sampling

    if args.prompts < 1 or args.seeds < 1:
        raise SystemExit("mtpchatd: --prompts and --seeds must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = _model_settings(args.model)
    checkpoint = resolve_checkpoint(_local_checkpoint(args.model, settings))
    model, tokenizer = load_chat_model(checkpoint, dtype=DTYPES[settings.dtype] if settings.dtype else None,
                                       quantization=settings.quantization)
    # the model as the daemon holds it once resident (daemon/serve/registry.py `_load`)
    entry = ModelEntry(settings, state="resident", model=model, tokenizer=tokenizer,
                       context=min(settings.context, model.config.max_position_embeddings),
                       checkpoint_sampling=checkpoint_sampling(checkpoint))
    described = entry.describe()
    report = {"model": str(checkpoint), "quantize": described["quantize"], "dtype": described["dtype"]}
    report |= measure_loops(entry, held_out_prompts(checkpoint)[:args.prompts], args.max_tokens, args.seeds)
    print(json.dumps(report, indent=2))
    return 0


def _train_head(args: argparse.Namespace) -> int:
    import dataclasses
    import shlex

    import torch

    from daemon.tools.train_head import TrainSettings, progress_line, train_head, trunk_fingerprint
    from daemon.weights.checkpoint import resolve_checkpoint
    from daemon.weights.demo_model import DemoModelError
    from mtpchat.paths import cache_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)}
        settings = TrainSettings(**{name: value for name, value in given.items() if value is not None})
        checkpoint = resolve_checkpoint(_local_checkpoint(args.model))
        work = args.work or cache_dir() / "train-head" / trunk_fingerprint(checkpoint)
        command = shlex.join(["mtpchatd", "train-head", *sys.argv[2:]]) if sys.argv[1:2] == ["train-head"] else ""
        record = train_head(checkpoint, args.out or checkpoint, work, settings, show=progress_line, command=command)
    except (DemoModelError, ValueError, OSError) as exc:
        print(f"mtpchatd: {exc}", file=sys.stderr)
        return 1
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(json.dumps(record["history"][-1] | {"head": str(args.out or checkpoint)}))
    return 0



MODEL_HELP = "configured model name, checkpoint directory or repo id (default: the default model)"


def add_commands(commands) -> None:
    """Register `bench`, `quality`, `loops` and `train-head` on mtpchatd's subcommand parser."""
    bench = commands.add_parser("bench", help="plain vs MTP decoding side by side, JSON out")
    bench.add_argument("--model", help=MODEL_HELP)
    bench.add_argument("--shape", choices=["qwen3.6-27b", "qwen3.6-35b-a3b"],
                       help="random weights at this real shape, with an oracle drafter, instead of a checkpoint")
    bench.add_argument("--layers", type=int, help="with --shape: fewer layers (a multiple of 4)")
    bench.add_argument("--vocab", type=int, help="with --shape: a smaller vocabulary")
    bench.add_argument("--oracle", type=_comma_list(float, 0, 1, "accuracies"), default=[0.6, 0.7, 0.8, 0.9],
                       help="with --shape: per-token draft accuracies (default 0.6,0.7,0.8,0.9)")
    bench.add_argument("--prompt-tokens", type=int, default=128, help="with --shape: prompt length")
    bench.add_argument("--draft", type=_comma_list(int, 1, MAX_DRAFT, "draft lengths"),
                       default=list(range(1, MAX_DRAFT + 1)),
                       help="draft lengths to measure, e.g. 1,3 (default: every one); `auto` up to the largest "
                            "is measured beside them")
    bench.add_argument("--draft-vocab", type=int, help="draft among the first N token ids only (with a checkpoint: "
                                                       "measured beside the full vocabulary)")
    bench.add_argument("--prompts", type=int, default=4, help="how many built-in prompts (1..4)")
    bench.add_argument("--prompt", action="append", help="your own prompt instead of the built-in ones (repeatable)")
    bench.add_argument("--max-tokens", type=int, default=64)
    bench.add_argument("--device")
    bench.add_argument("--dtype", choices=DTYPE_NAMES)
    bench.add_argument("--threads", type=int, help="torch CPU threads")
    bench.add_argument("--no-cuda-graphs", action="store_true",
                       help="on a GPU, decode eagerly instead of through the daemon's graph lane "
                            "(as cuda_graphs = false)")
    bench.add_argument("--compile", action="store_true",
                       help="torch.compile the decoding steps first (as a model with compile = true in config.toml)")
    bench.add_argument("--quantize", metavar="METHODS",
                       help=f"quantized weights, or a comma list measured one after the other: "
                            f"{','.join(QUANTIZE_CHOICES)} (default: the configured model's setting, else none; "
                            f"none with --shape)")
    bench.add_argument("--quantize-group", type=int, default=DEFAULT_QUANTIZE_GROUP,
                       help="with --quantize: inputs per int4 scale (32, 64 or 128)")
    bench.add_argument("--quantize-mtp", choices=QUANTIZE_CHOICES,
                       help="with --quantize: the MTP head's own method (default: as the trunk)")
    bench.add_argument("--conversation", metavar="TURNS", type=_comma_list(int, 1, 1000, "turns"),
                       help="instead: time to first token at these turns (e.g. 1,5,10,20) of a growing "
                            "conversation, conversation state cache off vs on")
    bench.add_argument("--daemon", action="store_true",
                       help="also compare the same request through the daemon (starting it if needed)")
    bench.add_argument("--endpoint", help="with --daemon: the daemon endpoint (default: the ipc socket)")
    bench.set_defaults(run=_bench)
    quality = commands.add_parser("quality", help="what quantization costs: top-1 agreement and KL of next-token "
                                                  "distributions against the unquantized model, JSON out")
    quality.add_argument("--model", help="configured model name, checkpoint directory or repo id")
    quality.add_argument("--quantize", metavar="METHODS", default="int8,int4",
                         help=f"comma list of {','.join(QUANTIZE_CHOICES)} (default int8,int4)")
    quality.add_argument("--quantize-group", type=int, default=DEFAULT_QUANTIZE_GROUP)
    quality.add_argument("--quantize-mtp", choices=QUANTIZE_CHOICES)
    quality.add_argument("--prompts", type=int, default=24, help="held-out prompts, spread over the built-in set")
    quality.add_argument("--max-tokens", type=int, default=64, help="reply tokens per prompt")
    quality.add_argument("--threads", type=int, help="torch CPU threads")
    quality.set_defaults(run=_quality)
    loops = commands.add_parser("loops", help="share of replies stuck in a repeated n-gram loop, greedy vs the "
                                              "model's sampling defaults, and MTP's speed-up under those, JSON out")
    loops.add_argument("--model", help=MODEL_HELP)
    loops.add_argument("--prompts", type=int, default=16,
                       help="how many of the held-out prompts of the model's MTP head (60 for the demo)")
    loops.add_argument("--max-tokens", type=int, default=200, help="reply tokens per prompt at most")
    loops.add_argument("--seeds", type=int, default=2, help="seeds per prompt (0, 1, ...)")
    loops.add_argument("--threads", type=int, help="torch CPU threads")
    loops.set_defaults(run=_loops)
    train = commands.add_parser("train-head", help="train an MTP head for a checkpoint without one (self-distillation)")
    train.add_argument("--model", help=MODEL_HELP)
    train.add_argument("--out", help="where mtp_head.safetensors goes (default: beside the checkpoint)")
    train.add_argument("--work", help="work directory for replies, features and resumable state "
                                      "(default: in the cache, per trunk)")
    # defaults: daemon.tools.train_head.TrainSettings (the committed demo head's, but --lm-head-dtype bfloat16;
    # its mtp_head.json records the exact command)
    train.add_argument("--prompt-set", choices=["v1", "v2"],
                       help="built-in prompts: v1 chat only (the first demo head's), v2 chat, code, technical "
                            "questions, lists and multi-turn conversations (default v2)")
    train.add_argument("--prompts", type=int, help="built-in prompts to use (default: all of the set, 934 in v2)")
    train.add_argument("--held-out", type=int, help="of those, kept for measuring acceptance (default 60)")
    train.add_argument("--max-new-tokens", type=int, help="length limit of the trunk's replies (default 128)")
    train.add_argument("--generate-batch", type=int, help="replies generated per batch (default 32)")
    train.add_argument("--replies", choices=["sampled", "greedy"],
                       help="the trunk's replies sampled at the checkpoint's sampling defaults with thinking off "
                            "(seeded), or greedy (default sampled)")
    train.add_argument("--steps", type=int, help="training steps (default 800)")
    train.add_argument("--batch", type=int, help="sequences per training step (default 8)")
    train.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    train.add_argument("--eval-every", type=int, help="steps between held-out measurements (default 100)")
    train.add_argument("--chain", type=int, help="draft steps trained in a chain: the head also learns from its "
                                                 "own outputs (default 2)")
    train.add_argument("--lm-head-dtype", choices=["float32", "bfloat16"],
                       help="the training loss's lm_head product: bfloat16 is about twice as fast on CPUs with "
                            "AVX512-BF16 and on GPUs, slower on other CPUs (default float32)")
    train.add_argument("--seed", type=int,
                       help="fixes the prompt sample, the initial head, the batch order (default 0)")
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.set_defaults(run=_train_head)
