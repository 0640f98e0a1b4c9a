"""`mtpchatd`: the inference daemon's command line.

Serving over ZeroMQ arrives with the daemon itself; until then `mtpchatd inspect` loads a checkpoint
with our loader and reports what the engine would run, which is how a user checks that a downloaded
Qwen3.5/3.6 checkpoint is usable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _inspect(args: argparse.Namespace) -> int:
    import torch

    from daemon.checkpoint import CheckpointError
    from daemon.loader import DTYPES, load_model

    started = time.perf_counter()
    try:
        model = load_model(args.checkpoint, device=args.device, dtype=DTYPES.get(args.dtype))
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"mtpchatd: {exc}", file=sys.stderr)
        return 1
    config = model.config
    report = {
        "checkpoint": str(args.checkpoint),
        "model_type": config.model_type,
        "layers": config.num_hidden_layers,
        "full_attention_layers": config.layer_types.count("full_attention"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "mtp_head": model.mtp is not None,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "load_seconds": round(time.perf_counter() - started, 3),
    }
    if model.device.type == "cuda":
        report["gpu_memory_bytes"] = torch.cuda.memory_allocated(model.device)
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtpchatd", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="load a checkpoint and report what the engine runs")
    inspect.add_argument("checkpoint", help="checkpoint directory or Hugging Face repo id (offline cache)")
    inspect.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if present)")
    inspect.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                         help="weight dtype (default: bfloat16 on CUDA, float32 on CPU)")
    inspect.set_defaults(run=_inspect)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
