"""Achieved memory bandwidth of each kind of weight layer at one row, beside what the machine can stream.

A decode step reads every weight once, so at batch 1 its speed is bytes read / bandwidth: the number that
shows whether a kernel streams its weights at the machine's speed (and a regression, as a number). Each
layer kind (qkv_proj, o_proj, gate_up_proj, down_proj, lm_head, ...) is timed as one decode step meets
it: one row through every layer of that kind in model order, so a layer's weights are not still in the
cache from its own previous call (on a model larger than the last-level cache). The machine's figures
are a sum over (read) and a copy of (read + write) a buffer larger than any cache.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch
from torch import nn

from daemon.model.fp8 import Fp8Linear
from daemon.model.linear import Linear
from daemon.model.quantized import Int4Linear, Int8Linear

WEIGHT_LAYERS = (Linear, Int8Linear, Int4Linear, Fp8Linear)


def _nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _kinds(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Weight layers by kind: the last part of their name, with `mtp.` kept apart from the trunk's. MoE
    experts are left out, float (parameters of RoutedExperts) and quantized (stacked layers) alike."""
    kinds: dict[str, list[nn.Module]] = defaultdict(list)
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_LAYERS) and not getattr(module, "experts", 0):
            kinds[("mtp." if name.startswith("mtp.") else "") + name.rsplit(".", 1)[-1]].append(module)
    return kinds


@torch.inference_mode()
def layer_bandwidth(model: nn.Module, repeats: int = 5) -> dict[str, dict]:
    """Per kind: layers, MB of weights (with scales), seconds of one row through all of them (median of
    `repeats`, after one untimed pass) and the GB/s that makes."""
    dtype = next(model.parameters()).dtype
    report = {}
    for kind, layers in sorted(_kinds(model).items()):
        rows = [torch.randn(1, layer.in_features, dtype=dtype, device=model.device) for layer in layers]
        def one_pass() -> float:
            started = time.perf_counter()
            for layer, row in zip(layers, rows):
                layer(row)
            return time.perf_counter() - started
        one_pass()
        seconds = statistics.median(one_pass() for _ in range(repeats))
        nbytes = sum(map(_nbytes, layers))
        report[kind] = {"layers": len(layers), "mb": round(nbytes / 1e6, 2), "seconds": seconds,
                        "gb_s": float(f"{nbytes / seconds / 1e9:.3g}")}
    return report


def machine_bandwidth(mb: int = 512, repeats: int = 5) -> dict[str, float]:
    """GB/s of summing (reading) and copying `mb` MB of float32 on the CPU, median of `repeats`."""
    source = torch.ones(mb * 250_000)
    target = torch.empty_like(source)
    nbytes = source.numel() * 4
    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    return {"read_gb_s": round(nbytes / timed(source.sum) / 1e9, 1),
            "copy_gb_s": round(2 * nbytes / timed(lambda: target.copy_(source)) / 1e9, 1)}
