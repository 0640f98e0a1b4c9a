#!/usr/bin/env python
"""Build the tiny hub-layout Qwen3.5/3.6 checkpoints (dense, MoE with Qwen3.6 fused MTP experts,
MoE with Qwen3.5 per-expert MTP experts) into OUT_DIR. Deterministic for a given seed and torch."""

import argparse
from pathlib import Path

from daemon.tiny.qwen_checkpoints import build_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, path in build_all(args.out_dir, seed=args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
