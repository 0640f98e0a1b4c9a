"""Quantize while loading: the loader's memory beyond the model it builds stays within a few copies of
its largest matrix, far below the whole model in float32 (scripts/load_peak_rss.py measures it at the
real shapes; README.md has the figures).

Not on the `tiny` checkpoints: their whole float model is 2-3 MB, the size of the RSS noise from the
allocator and from the pages of torch's code first run during a load. The checkpoint here has their
hub layout and the Qwen3.6-27B's layer pattern at a middling size (80 MB in bf16), where the whole
model in float32 (160 MB) is several times the bound.
"""

import pytest

from daemon.model.config import TextConfig
from daemon.tools.real_shapes import SHAPES
from mtpchat.config import Quantization
from scripts.load_peak_rss import measure_in_subprocess, planned, write_checkpoint

MIB = 1 << 20
TEXT = {**SHAPES["qwen3.6-27b"], "hidden_size": 512, "intermediate_size": 2048, "vocab_size": 4096,
        "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
        "linear_num_key_heads": 4, "linear_num_value_heads": 8, "linear_key_head_dim": 64,
        "linear_value_head_dim": 64}
# int8_quantize and int4_quantize hold a weight in float32 and up to two float32 temporaries of it at
# once (int4's packing takes its codes as int32, one more float32-sized copy, after those are freed),
# and the loader first reads a quantized weight as one bf16 copy (its stacked parts concatenated):
# 3.5 float32 copies of the largest matrix quantized in one piece; 4 leaves room for rounding.
COPIES = 4
# Torch's first-use buffers and the allocator's bookkeeping: 1-2 MB on the tiny checkpoints.
ALLOWANCE = 16 * MIB
# Every matrix of the real shapes is over glibc's largest mmap threshold (32 MB), so each is mapped
# when allocated and unmapped when freed; these 8 MB ones would be kept on the heap once the first is
# freed (dynamic threshold), retained there after the load. Allocated as at the real shapes instead.
ALLOCATED_AS_AT_REAL_SHAPES = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("load-peak-rss") / "checkpoint", TEXT)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_loading_allocates_a_few_copies_of_one_matrix_not_the_float_model(checkpoint, method):
    float_model = planned(TextConfig.from_dict(TEXT), Quantization("none"))["held"]
    run = measure_in_subprocess(checkpoint, method, env=ALLOCATED_AS_AT_REAL_SHAPES)
    largest = run["largest_quantized"]["float32_bytes"]
    bound = COPIES * largest + ALLOWANCE
    assert float_model > 2 * bound  # else materialising the float model could pass unnoticed
    # The peak RSS beyond the model, and the sampled anonymous peak: a float model held until quantizing
    # lives for most of the load, so both would see it; tensors are read, not mapped, so the checkpoint's
    # pages (80 MB here) are not in the RSS during the load nor at its end (a mapped shard's would be).
    assert run["overhead"] <= bound, (run["overhead"] / MIB, run)
    assert run["anon_overhead"] <= bound, (run["anon_overhead"] / MIB, run)
    assert run["file_pages"] <= ALLOWANCE, (run["file_pages"] / MIB, run)
