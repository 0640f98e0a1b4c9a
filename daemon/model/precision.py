"""The dtype that norms, softmaxes, RoPE angles and the DeltaNet recurrence compute in.

bf16/fp16 weights lose too much in a mean of squares, a softmax or a state carried over thousands of
tokens, so those run in float32 (as transformers does). A float64 model must not be rounded to
float32 on the way either: the parity tests run our forward and transformers' in float64, where the
two agree to ~1e-12 on any CPU, and a single float32 step would bring back float32's ~1e-7 error.
"""

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float32 and narrower weights, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)
