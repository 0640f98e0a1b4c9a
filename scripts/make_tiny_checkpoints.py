#!/usr/bin/env python
"""Build the tiny hub-layout Qwen3.5/3.6 checkpoints (dense, MoE with Qwen3.6 fused MTP experts,
MoE with Qwen3.5 per-expert MTP experts) into OUT_DIR, and with --quantized also the layouts that ship
quantized (Qwen FP8 blocks, compressed-tensors W4A16 / W8A16), each with its dequantized twin.
Deterministic for a given seed and torch."""

import argparse
from pathlib import Path

from daemon.tiny.quantized_checkpoints import build_quantized
from daemon.tiny.qwen_checkpoints import build_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quantized", action="store_true", help="also write the shipped-quantized variants")
    args = parser.parse_args()
    paths = build_all(args.out_dir, seed=args.seed)
    if args.quantized:
        paths.update(build_quantized(args.out_dir, seed=args.seed))
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
