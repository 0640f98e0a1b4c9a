"""The quantization quality measure: top-1 agreement and KL against the unquantized model (mtpchatd quality)."""

import math

import torch

from daemon.tools.quant_quality import compare, reference_replies, reply_log_probs
from daemon.weights.loader import load_model
from mtpchat.config import Quantization
from tests.helpers import random_ids


def test_compare_counts_agreement_and_kl_exactly_in_float64():
    same = [torch.log(torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64))]
    other = [torch.log(torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64))]
    assert compare(same, same) == {"positions": 1, "top1_agreement": 1.0, "mean_kl_nats": 0.0, "max_kl_nats": 0.0}
    kl = 0.5 * math.log(2) + 0.25 * math.log(0.5)  # sum p log(p/q)
    assert compare(same, other) == {"positions": 1, "top1_agreement": 0.0, "mean_kl_nats": round(kl, 5),
                                    "max_kl_nats": round(kl, 4)}


def test_teacher_forced_positions_are_the_reply_and_a_quantized_model_is_close(tiny):
    reference = load_model(tiny["qwen3.6-dense-tiny"])
    quantized = load_model(tiny["qwen3.6-dense-tiny"], quantization=Quantization("int8"))
    prompts = [random_ids(12, seed=s).flatten().tolist() for s in (1, 2)]
    sequences = reference_replies(reference, prompts, 6)
    expected = [reply_log_probs(reference, seq, len(p)) for seq, p in zip(sequences, prompts)]
    assert [e.shape[0] for e in expected] == [6, 6]
    # the reference's own greedy reply is its argmax at every reply position
    assert all(e.argmax(-1).tolist() == seq[len(p):] for e, seq, p in zip(expected, sequences, prompts))
    result = compare(expected, [reply_log_probs(quantized, seq, len(p)) for seq, p in zip(sequences, prompts)])
    # int8 is close, not identical: measured mean KL 0.0095 nats on this tiny model (any CPU: the rounding
    # is the weights', not the kernels'); 0.05 leaves 5x for that and still catches a broken quantizer
    assert result["positions"] == 12 and 0 < result["mean_kl_nats"] < 0.05
