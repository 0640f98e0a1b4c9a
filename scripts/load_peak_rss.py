"""Peak memory of `load_model` on a real-shape checkpoint, per quantization method (issue 14).

Usage: PYTHONPATH=. .venv/bin/python scripts/load_peak_rss.py --shape qwen3.6-27b --layers 4
       [--vocab N] [--methods none,int8,int4] [--group 32] [--work DIR] [--budget-gib 14]

Writes (once, cached under --work) a random bf16 checkpoint at the shape in the hub's layout, one shard
per layer plus one each for the embedding, the lm_head and the MTP head, so the writer never holds the
whole model. Then loads it on the CPU in a fresh process per method and prints one JSON object: the
machine, the checkpoint's bytes, and per method the loaded model's held bytes (parameters and
buffers), the largest tensor the loader reads at once and the largest matrix it quantizes in one
piece (in float32 bytes), the RSS after `import torch` and the daemon's modules (baseline), the peak
RSS (VmHWM, with getrusage's ru_maxrss beside it), and overhead = peak - baseline - held: what loading
costs beyond the model.

The peak RSS would also count the checkpoint's file pages if the loader mapped its shards (through
safetensors' safe_open it did, and every page read stayed resident to the end of the load); it now reads
each tensor into memory of its own (daemon/weights/checkpoint.py). `file_pages` is the growth of
file-backed RSS by the end of the load (the few MB of torch's own code first run during it, and any
mapped checkpoint pages), and a sampler gives the peak of anonymous memory alone: `anon_overhead` =
that peak - baseline - held is what the loader allocates beyond the model. The sampler reads every
millisecond, so it is a lower bound, close at real shapes where each tensor takes a second. A method whose estimated
peak of allocated memory exceeds --budget-gib is skipped, with the estimate.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from daemon.model.config import TextConfig
from daemon.model.linear import checkpoint_tensors
from daemon.model.quantized import QuantizedExperts, quantize_modules, quantized_weights
from daemon.model.text_model import QwenModel
from daemon.tools.real_shapes import SHAPES, shape_config
from daemon.weights.checkpoint import INDEX_FILE
from daemon.weights.loader import load_model
from mtpchat.config import Quantization
from mtpchat.machine import machine

PAGE = os.sysconf("SC_PAGE_SIZE")
GIB = 1 << 30
TRUNK = "model.language_model."
# int8_quantize / int4_quantize hold the float32 weight and up to two float32 temporaries at once, and
# the loader reads a quantized weight as one bf16 copy first (torch.cat of its parts): 3.5 float32
# copies of the largest quantized matrix. Used only to skip what would not fit --budget-gib.
QUANTIZE_COPIES = 3.5


def memory() -> dict[str, int]:
    """This process's resident bytes now: all, anonymous, and file-backed (with shared memory)."""
    _, resident, shared = (int(v) for v in Path("/proc/self/statm").read_text().split()[:3])
    return {"rss": resident * PAGE, "anon": (resident - shared) * PAGE, "file": shared * PAGE}


def peak_rss() -> int:
    """This process's peak resident bytes (VmHWM). getrusage's ru_maxrss is the same figure or, when
    larger, the resident size of the process that spawned this one (Linux carries it across exec)."""
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024


# --- the checkpoint -------------------------------------------------------------------------------

def _hub_name(name: str) -> str:
    return name if name.startswith(("mtp.", "lm_head.")) else TRUNK + name


def _shard_of(name: str) -> str:
    """One shard per layer, and one each for the embedding (with the final norm), lm_head and MTP head."""
    if name.startswith("layers."):
        return f"layer-{int(name.split('.')[1]):03d}"
    return name.split(".")[0] if name.startswith(("mtp.", "lm_head.")) else "embed"


@torch.no_grad()
def _random(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    if name.endswith("A_log"):
        return torch.empty(shape, dtype=torch.bfloat16).uniform_(0.0, 2.7, generator=generator)
    if name.endswith(("dt_bias", "linear_attn.norm.weight")):
        return torch.ones(shape, dtype=torch.bfloat16)
    if "norm" in name:
        return torch.zeros(shape, dtype=torch.bfloat16)
    return torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=generator)


def write_checkpoint(directory: Path, text: dict, seed: int = 0) -> Path:
    """A random bf16 checkpoint for the text config `text` (SHAPES' fields, say) in the hub layout,
    written shard by shard; reused when `directory` already holds one (its index is written last)."""
    if (directory / INDEX_FILE).exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    text = {**text, "tie_word_embeddings": False}
    config = TextConfig.from_dict(text)
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in checkpoint_tensors(QwenModel(config, with_mtp=True)).items()}
    shards: dict[str, list[str]] = {}
    for name in shapes:
        shards.setdefault(_shard_of(name), []).append(name)
    generator = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for i, names in enumerate(shards.values(), start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {_hub_name(n): _random(n, shapes[n], generator) for n in names}
        save_file(tensors, directory / filename, metadata={"format": "pt"})
        total += sum(t.nbytes for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, filename))
        del tensors
    top = "qwen3_5_moe" if config.is_moe else "qwen3_5"
    (directory / "config.json").write_text(json.dumps({"model_type": top, "text_config": text}, indent=2) + "\n")
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return directory


def on_disk_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in Path(directory).glob("*.safetensors"))


# --- what the loader holds and converts -----------------------------------------------------------

def sizes(model: torch.nn.Module) -> dict:
    """held: bytes of parameters and buffers; largest_read: the largest tensor the loader reads at once
    (a stacked weight's parts together, a fused experts tensor whole) and largest_quantized: the largest
    matrix it quantizes in one piece (experts one by one), each as (name, float32 bytes)."""
    held = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    read, quantized = [], []
    for name, module, shape in quantized_weights(model):
        read.append((name, shape.numel()))
        experts = isinstance(module, QuantizedExperts)
        quantized.append((f"{name}.0", shape[1:].numel()) if experts else read[-1])
    read += [(name, p.numel()) for name, p in model.named_parameters()]

    def largest(found):
        name, numel = max(found, key=lambda item: item[1], default=(None, 0))
        return {"name": name, "float32_bytes": 4 * numel}
    return {"held": held, "largest_read": largest(read), "largest_quantized": largest(quantized)}


def planned(config: TextConfig, quantization: Quantization) -> dict:
    """`sizes` of the model the loader would build, on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = QwenModel(config, with_mtp=True).to(torch.float32)
        quantize_modules(model, quantization)
    return sizes(model)


def estimated_peak(plan: dict, baseline: int) -> int:
    """Allocated memory at the peak as the loader works today (the file pages are reclaimable)."""
    return baseline + plan["held"] + int(QUANTIZE_COPIES * plan["largest_quantized"]["float32_bytes"])


# --- the measurement (in a fresh process) ---------------------------------------------------------

class AnonPeak:
    """Samples this process's anonymous resident memory every `interval` s in a thread (torch releases
    the GIL in its kernels); `peak` is a lower bound of the true peak."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.peak, self._stop = interval, memory()["anon"], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, memory()["anon"])

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, memory()["anon"])


def measure(checkpoint: Path, method: str, group: int) -> dict:
    """Load `checkpoint` with `method` here (call it in a fresh process: the peak is the process's)."""
    torch.set_num_threads(1)
    imported = memory()
    # The loader's first model built on the meta device imports torch._dynamo (nn.Embedding's meta
    # normal_ goes through torch._refs): a one-off cost per process, taken before the baseline.
    importlib.import_module("torch._dynamo")
    baseline = memory()
    at_end = {}

    def progress(fraction: float) -> None:
        if fraction == 1.0:  # the loader's shards are still open: their resident pages count here
            at_end.update(memory())

    start = time.perf_counter()
    with AnonPeak() as anon:
        model = load_model(checkpoint, device="cpu", quantization=Quantization(method, group), progress=progress)
    seconds = time.perf_counter() - start
    peak = peak_rss()
    found = sizes(model)
    held = found.pop("held")
    return {
        "method": method, "load_seconds": round(seconds, 1), "held": held, **found,
        "dynamo_import_rss": baseline["rss"] - imported["rss"], "baseline_rss": baseline["rss"],
        "peak_rss": peak, "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "overhead": peak - baseline["rss"] - held, "file_pages": at_end["file"] - baseline["file"],
        "peak_anon": anon.peak, "anon_overhead": anon.peak - baseline["anon"] - held,
    }


def measure_in_subprocess(checkpoint: Path, method: str, group: int = 32, env: dict | None = None) -> dict:
    """`measure` in a fresh Python process (this script run with --measure), its JSON parsed."""
    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": str(root), **(env or {})}
    result = subprocess.run([sys.executable, __file__, "--measure", str(checkpoint), "--method", method,
                             "--group", str(group)], env=environment, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"measuring {method} on {checkpoint} failed (exit {result.returncode}):\n"
                           f"{result.stderr[-4000:]}")
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3.6-27b")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=None, help="default: the shape's full vocabulary")
    parser.add_argument("--methods", default="none,int8,int4")
    parser.add_argument("--group", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mtpchat-load-peak-rss"))
    parser.add_argument("--budget-gib", type=float, default=14.0,
                        help="skip a method whose estimated peak allocated memory exceeds this")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child's side
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.method, args.group)))
        return

    shape_config(args.shape, args.layers, args.vocab)  # validates the shape and the layers
    vocab = args.vocab or SHAPES[args.shape]["vocab_size"]
    text = {**SHAPES[args.shape], "num_hidden_layers": args.layers, "vocab_size": vocab}
    baseline = memory()["rss"]  # this process has imported what a child has at its baseline
    report = {"machine": machine(), "shape": args.shape, "layers": args.layers, "vocab": vocab,
              "budget": int(args.budget_gib * GIB), "runs": []}
    plans = {method: planned(TextConfig.from_dict(text), Quantization(method, args.group))
             for method in args.methods.split(",")}
    for method, plan in plans.items():
        estimate = estimated_peak(plan, baseline)
        if estimate > report["budget"]:
            report["runs"].append({"method": method, "skipped": f"estimated peak {estimate / GIB:.1f} GiB "
                                   f"(held {plan['held'] / GIB:.1f} GiB + {QUANTIZE_COPIES} x the largest "
                                   f"quantized matrix in float32) exceeds --budget-gib {args.budget_gib}"})
    skipped = {run["method"] for run in report["runs"]}
    if len(skipped) < len(plans):
        directory = args.work / f"{args.shape}-{args.layers}layers-vocab{vocab}"
        start = time.perf_counter()
        write_checkpoint(directory, text)
        report.update(checkpoint=str(directory), write_or_reuse_seconds=round(time.perf_counter() - start, 1),
                      on_disk=on_disk_bytes(directory))
        report["runs"] += [measure_in_subprocess(directory, method, args.group) for method in plans
                           if method not in skipped]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
