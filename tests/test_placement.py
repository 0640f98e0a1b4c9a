"""Placement plans over declared device capacities, model footprints against what loading really
takes, and the split execution path (layers on several devices, activations handed over) on CPU."""

import pytest
import torch

from daemon.model.config import TextConfig
from daemon.serve.footprint import MAX_DRAFT_SLOTS, checkpoint_footprint, device_budgets
from daemon.serve.placement import DeviceBudget, Footprint, PlacementError, plan_placement
from daemon.weights.loader import load_model
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
    with pytest.raises(PlacementError, match=r"53\.90 GiB but only cuda:0 20\.00 GiB, cuda:1 20\.00 GiB .*13\.90 GiB missing"):
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
