"""Placement plans over declared device capacities, model footprints against what loading really
takes, and the split execution path (layers on several devices, activations handed over) on CPU."""

import functools

import pytest
import torch

from daemon.model.config import TextConfig
from daemon.serve.footprint import MAX_DRAFT_SLOTS, checkpoint_footprint, device_budgets, model_footprint
from daemon.serve.placement import GPU_HEADROOM, DeviceBudget, Footprint, PlacementError, plan_placement
from daemon.tools.real_shapes import shape_config
from daemon.weights.loader import load_model
from mtpchat.config import Quantization, format_size
from mtpchat.protocol import MAX_DRAFT
from mtpchat.status_text import placement_line
from tests.helpers import decode, random_ids

GIB = 2**30
# a 27B-like model in bf16: 1.3 GiB embedding, 64 layers of 0.8 GiB, 1.4 GiB head -> 53.9 GiB
BIG = Footprint(int(1.3 * GIB), (int(0.8 * GIB),) * 64, int(1.4 * GIB))
SMALL = Footprint(GIB, (GIB // 4,) * 40, GIB)  # 12 GiB


def gpus(*free_gib: float) -> list[DeviceBudget]:
    return [DeviceBudget("cpu", 200 * GIB)] + [DeviceBudget(f"cuda:{i}", int(f * GIB)) for i, f in enumerate(free_gib)]


def after(budgets: list[DeviceBudget], plan) -> list[DeviceBudget]:
    return [DeviceBudget(b.name, b.free - plan.bytes_by_device.get(b.name, 0)) for b in budgets]


def test_a_model_that_fits_takes_the_roomiest_gpu_whole():
    plan = plan_placement("small", SMALL, gpus(40, 70, 70))
    assert plan.devices == ["cuda:1"]
    assert plan.embed_device == plan.head_device == "cuda:1" and set(plan.layer_devices) == {"cuda:1"}
    assert plan.bytes_by_device == {"cuda:1": SMALL.total}


def test_two_models_that_fit_get_a_gpu_each():
    budgets = gpus(60, 60)
    first = plan_placement("dense", BIG, budgets)
    second = plan_placement("moe", SMALL, after(budgets, first))
    assert first.devices == ["cuda:0"] and second.devices == ["cuda:1"]


def test_a_model_too_big_for_one_gpu_is_split_over_the_fewest_in_index_order():
    budgets = gpus(20, 30, 5, 30)
    plan = plan_placement("dense", BIG, budgets)
    assert plan.devices == ["cuda:1", "cuda:3"]  # 30 + 30 suffice; cuda:0 and cuda:2 stay free
    assert plan.embed_device == "cuda:1" and plan.head_device == "cuda:3"
    order = [int(d.split(":")[1]) for d in plan.layer_devices]
    assert order == sorted(order)  # contiguous segments: one hand-over between cards
    assert sum(plan.bytes_by_device.values()) == BIG.total
    room = {b.name: b.free for b in budgets}
    assert all(nbytes <= room[device] for device, nbytes in plan.bytes_by_device.items())
    rows = plan.describe()
    assert rows[0]["layers"][0] == 0 and rows[-1]["layers"][-1] == 63
    assert rows[0]["embedding"] and rows[-1]["head"] and not rows[0]["head"]


def test_a_named_device_must_hold_the_model_and_a_list_is_split_in_the_given_order():
    assert plan_placement("small", SMALL, gpus(70, 20), ("cuda:1",)).devices == ["cuda:1"]
    plan = plan_placement("dense", BIG, gpus(40, 40), ("cuda:1", "cuda:0"))
    assert plan.embed_device == "cuda:1" and plan.head_device == "cuda:0"
    assert plan_placement("small", SMALL, gpus(70), ("cpu",)).devices == ["cpu"]
    with pytest.raises(PlacementError, match=r"'dense' needs 53\.90 GiB .* cuda:0 20\.00 GiB .*33\.90 GiB missing"):
        plan_placement("dense", BIG, gpus(20, 70), ("cuda:0",))
    with pytest.raises(PlacementError, match="asks for device cuda:7, which this machine does not have"):
        plan_placement("small", SMALL, gpus(70), ("cuda:7",))


def test_without_a_gpu_the_cpu_and_what_is_missing_when_nothing_fits():
    assert plan_placement("small", SMALL, [DeviceBudget("cpu", 16 * GIB)]).devices == ["cpu"]
    with pytest.raises(PlacementError, match=r"needs 12\.00 GiB but only cpu 8\.00 GiB can be used: 4\.00 GiB missing"):
        plan_placement("small", SMALL, [DeviceBudget("cpu", 8 * GIB)])
    with pytest.raises(PlacementError,
                       match=r"53\.90 GiB but only cuda:0 20\.00 GiB, cuda:1 20\.00 GiB .*13\.90 GiB missing"):
        plan_placement("dense", BIG, gpus(20, 20))


def test_max_memory_caps_a_device_less_what_our_models_hold():
    budgets = {b.name: b.free for b in device_budgets({"cpu": 3 * GIB}, {"cpu": GIB})}
    assert budgets["cpu"] == 2 * GIB
    assert {b.name: b.free for b in device_budgets({}, {})}["cpu"] > 0


@pytest.mark.parametrize("variant", ["qwen3.6-dense-tiny", "qwen3.6-moe-tiny"])
def test_footprint_is_what_loading_and_one_stream_really_take(tiny, variant):
    footprint, context = checkpoint_footprint(tiny[variant], torch.float32, 10**9)
    config = TextConfig.from_checkpoint(tiny[variant])
    assert context == config.max_position_embeddings  # capped at the model's limit
    model = load_model(tiny[variant], device="cpu")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    caches = model.new_cache(context, max_steps=MAX_DRAFT_SLOTS).nbytes() + model.new_mtp_cache(context).nbytes()
    assert footprint.total == weights + caches
    assert len(footprint.layers) == config.num_hidden_layers


@torch.inference_mode()
def test_footprint_step_slots_hold_the_largest_verify_the_wire_allows(tiny):
    """A verify at the largest draft the protocol accepts (MAX_DRAFT drafts + the last token) records one
    DeltaNet state per token: the footprint's slots are exactly that many, so the budget neither falls
    short of a real reply nor over-reserves."""
    model = load_model(tiny["qwen3.6-dense-tiny"], device="cpu")
    prompt = random_ids(8, seed=6)
    verify = random_ids(MAX_DRAFT + 1, seed=7)
    for slots, fits in ((MAX_DRAFT_SLOTS, True), (MAX_DRAFT_SLOTS - 1, False)):
        cache = model.new_cache(32, max_steps=slots)
        model(prompt, cache, 0)
        if fits:
            model(verify, cache, prompt.shape[1], keep_steps=True)
        else:
            with pytest.raises(ValueError, match="state slots"):
                model(verify, cache, prompt.shape[1], keep_steps=True)


def split_plan(checkpoint, devices: list[str]):
    """The model's layers over `devices` (CPU aliases here), as evenly as the plan fills them."""
    footprint, _ = checkpoint_footprint(checkpoint, torch.float32, 64)
    share = footprint.total // len(devices) + max(footprint.layers)
    return plan_placement("split", footprint, [DeviceBudget(d, share) for d in devices], tuple(devices))


@pytest.mark.parametrize("variant", ["qwen3.6-dense-tiny", "qwen3.6-moe-tiny"])
def test_a_split_model_computes_exactly_what_the_whole_one_does(tiny, variant):
    """cpu:0..2 are the same memory, but distinct devices to the model: each segment boundary moves
    the activations and builds that device's step context, as between GPUs."""
    plan = split_plan(tiny[variant], ["cpu:0", "cpu:1", "cpu:2"])
    assert len(set(plan.layer_devices)) >= 2
    split = load_model(tiny[variant], placement=plan)
    whole = load_model(tiny[variant], device="cpu")
    assert [str(device) for device, _ in split.segments] == sorted(set(plan.layer_devices))
    ids = random_ids(40, seed=3)
    cache_split, cache_whole = split.new_cache(64, max_steps=4), whole.new_cache(64, max_steps=4)
    for start, end in ((0, 30), (30, 31), (31, 35)):  # prefill, a decode step, a 4-token verify
        keep = end - start <= 4
        logits_split, hidden_split = split(ids[:, start:end], cache_split, start, keep_steps=keep)
        logits_whole, hidden_whole = whole(ids[:, start:end], cache_whole, start, keep_steps=keep)
        assert torch.equal(logits_split, logits_whole) and torch.equal(hidden_split, hidden_whole)
    drafts = [model.mtp_forward(ids[:, 32:36], hidden_whole, model.new_mtp_cache(64), 0)[0]
              for model in (split, whole)]
    assert torch.equal(*drafts)
    prompt = ids[0, :20].tolist()
    plain = decode(whole, prompt, 24)
    assert decode(split, prompt, 24, draft_k=3) == plain


# Both real models resident on two 32 GiB cards (README "Both models on two 32 GB cards"): footprints
# from the real Qwen3.6 shapes on the meta device (quantized layers at their quantized bytes, bf16
# embedding, lm_head int8 whenever the trunk is quantized, bf16 MTP head, one 32k-token stream's caches),
# budgets as device_budgets makes them from 32 GiB free per card (GPU_HEADROOM kept for activations).
# The 27B is planned first (config order), the 35B-A3B into what is left.
CARD = int(32 * GIB * GPU_HEADROOM)
REAL_CONTEXT = 32768


@functools.cache
def real_footprint(shape: str, method: str) -> Footprint:
    return model_footprint(shape_config(shape), torch.bfloat16, True, REAL_CONTEXT, Quantization(method, 128, "none"))


def plan_both(dense: str, moe: str) -> list[list[str]]:
    """`mtpchat daemon status`'s placement lines for each model, 27B then 35B-A3B."""
    budgets = [DeviceBudget("cpu", 200 * GIB), DeviceBudget("cuda:0", CARD), DeviceBudget("cuda:1", CARD)]
    lines = []
    for shape, method in (("qwen3.6-27b", dense), ("qwen3.6-35b-a3b", moe)):
        plan = plan_placement(shape, real_footprint(shape, method), budgets)
        assert all(nbytes <= b.free for b in budgets for d, nbytes in plan.bytes_by_device.items() if d == b.name)
        budgets = after(budgets, plan)
        lines.append([placement_line(part) for part in plan.describe()])
    return lines


def test_real_footprints_at_32k_context():
    totals = {(shape, method): format_size(real_footprint(shape, method).total)
              for shape in ("qwen3.6-27b", "qwen3.6-35b-a3b") for method in ("none", "int8", "int4", "fp8")}
    # fp8: a float32 scale per 128x128 block instead of int8's bfloat16 scale per row, about as small
    assert totals == {("qwen3.6-27b", "none"): "53.87 GiB", ("qwen3.6-27b", "int8"): "30.04 GiB",
                      ("qwen3.6-27b", "int4"): "19.41 GiB", ("qwen3.6-27b", "fp8"): "30.04 GiB",
                      ("qwen3.6-35b-a3b", "none"): "67.18 GiB", ("qwen3.6-35b-a3b", "int8"): "35.46 GiB",
                      ("qwen3.6-35b-a3b", "int4"): "20.72 GiB", ("qwen3.6-35b-a3b", "fp8"): "35.41 GiB"}


def test_both_models_fit_two_32gb_cards_at_int8_plus_int4_or_int4_plus_int4():
    assert plan_both("int8", "int4") == [
        ["cuda:0   layers 0-63 + embedding          27.94 GiB", "cuda:1   head                             2.10 GiB"],
        ["cuda:1   layers 0-39 + embedding + head   20.72 GiB"]]
    assert plan_both("int4", "int4") == [
        ["cuda:0   layers 0-63 + embedding + head   19.41 GiB"],
        ["cuda:1   layers 0-39 + embedding + head   20.72 GiB"]]
    assert plan_both("int4", "int8") == [
        ["cuda:0   layers 0-63 + embedding + head   19.41 GiB"],
        ["cuda:0   layers 0-9 + embedding           9.03 GiB", "cuda:1   layers 10-39 + head              26.43 GiB"]]


@pytest.mark.parametrize("dense, moe, message", [
    ("none", "none", r"'qwen3.6-35b-a3b' needs 67\.18 GiB but only cuda:0 128\.58 MiB, cuda:1 3\.60 GiB can be used: "
                     r"63\.45 GiB missing"),
    ("int8", "int8", r"'qwen3.6-35b-a3b' needs 35\.46 GiB but only cuda:0 879\.85 MiB, cuda:1 26\.70 GiB can be "
                     r"used: 7\.90 GiB missing"),
])
def test_bf16_or_int8_for_both_is_refused_naming_the_missing_memory(dense, moe, message):
    with pytest.raises(PlacementError, match=message):
        plan_both(dense, moe)
