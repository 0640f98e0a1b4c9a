"""The one CUDA-only call of the captured decoding paths: a function over static buffers, captured once
as a `torch.cuda.CUDAGraph` and replayed from then on.

Everything around it — the static inputs and outputs, which shapes exist, when a replay runs — is the
callers' (StepRunner, GraphLane) and runs in the CPU tests, where the function itself stands in for
its replay. The H200 check (scripts/device_check.py) replays captured steps against eager ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

WARMUP_RUNS = 3  # eager runs on a side stream before capturing, as torch.cuda.graphs' docs require


def cuda_graph(fn: Callable[[], None], device: torch.device, *, before_each_warmup: Callable[[], None] = lambda: None,
               pool=None) -> Callable[[], None]:
    """`fn` captured on `device`; its replay. `pool`: a memory pool shared with other graphs that never
    run at the same time (torch.cuda.graph_pool_handle()). Other threads may keep using the GPU while
    this captures (capture_error_mode "thread_local": only this thread's calls are captured)."""
    with torch.cuda.device(device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                before_each_warmup()
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            fn()
    return graph.replay
