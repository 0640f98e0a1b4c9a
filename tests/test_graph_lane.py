"""The daemon's graph lane (daemon/engine/graph_lane.py): a sequence that takes it decodes the eager
decoder's tokens — plain and MTP, greedy, sampled and penalised, resumed from a saved prompt state —
while its forwards run over the lane's static buffers; one sequence holds it at a time, and gives it
back however it ends (done, cancelled mid-prefill, a fault mid-step); what the lane was not made for
decodes eagerly. The registry captures a lane when a model loads, and serves eagerly if that fails.

On the CPU a lane runs each forward itself where a GPU replays its graph: everything but the capture
call. Models are float64, where the lane's fixed-shape forwards (attention over the whole capacity,
masked) differ from the eager ones only in summation order (~1e-15 relative), so token ids are equal.
"""

import pytest
import torch
from torch._dynamo.utils import counters

from daemon.engine.generate import PREFILLING, Generation
from daemon.engine.graph_lane import GraphLane, graph_lane, install_graph_lane
from daemon.engine.options import GenerationOptions
from daemon.engine.sampling import SamplingParams
from daemon.engine.speculative import SpeculativeDecoder
from daemon.engine.state_cache import PromptReuse, StateCache
from daemon.serve import registry as registry_module
from daemon.serve.registry import ModelRegistry
from daemon.weights.loader import load_model
from mtpchat.config import Config, ModelSettings
from mtpchat.protocol import MAX_DRAFT
from tests.helpers import chat_prompt, random_ids, wait_until

MODELS = ["qwen3.6-dense-tiny", "qwen3.6-moe-tiny"]
CAPACITY = 160
SAMPLED = SamplingParams(temperature=0.8, top_p=0.95, top_k=20, seed=5)
PENALISED = SamplingParams(repetition_penalty=1.3, presence_penalty=0.5)
# (draft k, adaptive, sampling): plain, fixed and adaptive k, sampled, penalised
VARIANTS = [(0, False, SamplingParams()), (2, False, SamplingParams()), (MAX_DRAFT, True, SamplingParams()),
            (3, False, SAMPLED), (2, False, PENALISED)]


def _load(tiny, name):
    return load_model(tiny[name], device="cpu", dtype=torch.float64)


def _options(k=0, adaptive=False, sampling=SamplingParams(), max_tokens=40, **extra):
    return GenerationOptions(max_tokens=max_tokens, draft_k=k, adaptive=adaptive, sampling=sampling, **extra)


def _tokens(model, prompt, options, **kwargs) -> list[int]:
    return Generation(model, prompt, options, **kwargs).tokens()


def _count_replays(lane: GraphLane) -> dict[str, int]:
    """How often each of the lane's forwards ran over its static buffers."""
    counts = {}
    for name, replay in [*((f"trunk {rows}", r) for (rows, _), r in lane._trunk.items()), ("draft", lane._draft)]:
        counts[name] = 0

        def counted(run=replay.run, name=name):
            counts[name] += 1
            run()

        replay.run = counted
    return counts


def _free(lane: GraphLane) -> bool:
    if lane.acquire(lane.capacity, lane.max_k):
        lane.release()
        return True
    return False


@pytest.mark.parametrize("name", MODELS)
def test_a_lane_decodes_the_eager_tokens(tiny, name):
    eager, model = _load(tiny, name), _load(tiny, name)
    prompts = [chat_prompt(tiny[name], "Hello! Who are you?"), random_ids(90, seed=4)[0].tolist()]
    expected = [_tokens(eager, p, _options(k, a, s)) for p in prompts for k, a, s in VARIANTS]
    lane = install_graph_lane(model, CAPACITY)
    counts = _count_replays(lane)
    assert [_tokens(model, p, _options(k, a, s)) for p in prompts for k, a, s in VARIANTS] == expected
    assert counts["trunk 1"] > 0 and counts["draft"] > 0, counts
    assert sum(counts[f"trunk {rows}"] for rows in range(2, MAX_DRAFT + 2)) > 0, counts
    assert _free(lane)


class _Scripted:
    """A draft policy that plays a fixed list of k per step: plain steps between speculative ones, the
    pattern an adaptive policy falls into when drafts stop paying."""

    def __init__(self, ks: list[int]):
        self.ks = iter(ks)

    def choose(self) -> int:
        return next(self.ks, 2)

    def update(self, k: int, accepted: int, seconds: float) -> None:
        pass


def _scripted_tokens(model, prompt, ks: list[int], steps: int) -> list[int]:
    decoder = SpeculativeDecoder(model, prompt, CAPACITY, _options(MAX_DRAFT))
    decoder.policy = _Scripted(ks)
    tokens = [decoder.prefill()]
    for _ in range(steps):
        tokens += decoder.step(CAPACITY)[0]
    decoder.close()
    return tokens


def test_plain_steps_between_drafting_ones(tiny):
    """Plain steps queue their hidden states for the MTP head, which runs them at the next drafting step,
    after other forwards replayed: the tokens are still the eager decoder's."""
    name = MODELS[0]
    eager, model = _load(tiny, name), _load(tiny, name)
    prompt = chat_prompt(tiny[name], "Hello! Who are you?")
    ks = [0, 0, 0, 3, 0, 0, 1, 0, 4, 0, 0, 0, 2]
    expected = _scripted_tokens(eager, prompt, ks, len(ks))
    lane = install_graph_lane(model, CAPACITY)
    assert _scripted_tokens(model, prompt, ks, len(ks)) == expected
    assert _free(lane)


def test_what_a_forward_returned_outlives_the_next_replay(tiny):
    """A graph writes its outputs at fixed addresses: the lane hands out copies, so a caller that keeps
    a result (a queued hidden state, logits) does not see it change under the next replay."""
    model = _load(tiny, MODELS[0])
    lane = install_graph_lane(model, CAPACITY)
    with torch.inference_mode():
        first = lane.trunk(torch.tensor([[5]]), lane.cache, 0)
        kept = [t.clone() for t in first]
        lane.trunk(torch.tensor([[9]]), lane.cache, 1)
        draft = lane.mtp(torch.tensor([[5]]), first[1], lane.mtp_cache, 0)
        kept_draft = [t.clone() for t in draft]
        lane.mtp(torch.tensor([[9]]), draft[1], lane.mtp_cache, 1)
    for before, after in zip([*kept, *kept_draft], [*first, *draft], strict=True):
        assert torch.equal(before, after)


def test_one_sequence_holds_the_lane_the_next_decodes_eagerly(tiny):
    name = MODELS[0]
    eager, model = _load(tiny, name), _load(tiny, name)
    prompts = [chat_prompt(tiny[name], "Hello! Who are you?"), random_ids(30, seed=6)[0].tolist()]
    expected = [_tokens(eager, p, _options(2)) for p in prompts]
    lane = install_graph_lane(model, CAPACITY)
    first, second = (Generation(model, p, _options(2)) for p in prompts)
    outputs: list[list[int]] = [[], []]
    for a, b in zip(first, second, strict=True):  # stepped in turn, as the engine thread does
        outputs[0].append(a.token)
        outputs[1].append(b.token)
    assert outputs == expected
    assert _free(lane)
    # the lane's caches start from zero state for the next sequence
    assert _tokens(model, prompts[1], _options(2)) == expected[1]


def test_the_lane_comes_back_after_a_cancel_or_a_fault(tiny):
    name = MODELS[0]
    model = _load(tiny, name)
    lane = install_graph_lane(model, CAPACITY)
    prompt = random_ids(100, seed=7)[0].tolist()
    generation = Generation(model, prompt, _options(2, prefill_chunk=32))
    assert next(generation) is PREFILLING and not _free(lane)
    generation.close()  # cancelled while its prompt was still going in
    assert _free(lane)

    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")

    verify = lane._trunk[(3, True)]
    verify.run = out_of_memory
    with pytest.raises(torch.OutOfMemoryError):
        _tokens(model, prompt, _options(2))
    assert _free(lane)


def test_what_a_lane_was_not_made_for_decodes_eagerly(tiny):
    name = MODELS[0]
    eager, model = _load(tiny, name), _load(tiny, name)
    prompt = chat_prompt(tiny[name], "Hello! Who are you?")
    lane = install_graph_lane(model, len(prompt) + 20, 512, max_k=2)
    counts = _count_replays(lane)
    for options in (_options(2, max_tokens=21), _options(3, max_tokens=20)):  # past its capacity; more drafts
        assert _tokens(model, prompt, options) == _tokens(eager, prompt, options)
    assert sum(counts.values()) == 0
    # another draft vocabulary: the trunk replays, the MTP head's draft runs eagerly
    options = _options(2, max_tokens=20, draft_vocab=256)
    assert _tokens(model, prompt, options) == _tokens(eager, prompt, options)
    assert counts["trunk 3"] > 0 and counts["draft"] == 0


def test_a_lane_resumes_from_a_saved_prompt_state(tiny):
    name = MODELS[1]
    eager, model = _load(tiny, name), _load(tiny, name)
    install_graph_lane(model, CAPACITY)
    turn = chat_prompt(tiny[name], "Hello! Who are you?")
    first, second = (turn + random_ids(12, seed=seed)[0].tolist() for seed in (8, 9))
    expected = _tokens(eager, second, _options(3))
    states = StateCache(1 << 30)
    _tokens(model, first, _options(3), reuse=PromptReuse(states, name, boundary=len(turn)))  # saves `turn`'s state
    resumed = Generation(model, second, _options(3), reuse=PromptReuse(states, name))
    assert resumed.tokens() == expected
    assert resumed.stats.cached_tokens == len(turn)


def test_a_compiled_lane_decodes_the_eager_tokens_and_no_reply_compiles(tiny):
    """`compile` traces each forward whole (fullgraph: no graph break) before capturing it again. Traced
    with torch.compile's "eager" backend: which graphs exist and what their guards accept is decided by
    tracing (tests/test_step_functions.py says why that is enough here)."""
    name = MODELS[1]
    eager, model = _load(tiny, name), _load(tiny, name)
    prompts = [chat_prompt(tiny[name], "Hello! Who are you?"), random_ids(90, seed=4)[0].tolist()]
    expected = [_tokens(eager, p, _options(k, a, s)) for p in prompts for k, a, s in VARIANTS]
    lane = install_graph_lane(model, CAPACITY)
    before = counters["stats"]["unique_graphs"]
    lane.compile(backend="eager")
    graphs = counters["stats"]["unique_graphs"]
    assert lane.compiled and graphs - before == MAX_DRAFT + 2  # a decode, each verify, the draft step
    counts = _count_replays(lane)
    assert [_tokens(model, p, _options(k, a, s)) for p in prompts for k, a, s in VARIANTS] == expected
    assert counters["stats"]["unique_graphs"] == graphs, "a reply compiled a graph"
    assert counts["trunk 1"] > 0 and counts["draft"] > 0 and counts[f"trunk {MAX_DRAFT + 1}"] > 0, counts


def test_the_registry_captures_a_lane_at_load_or_serves_eagerly(tiny, monkeypatch):
    monkeypatch.setattr(registry_module, "GRAPH_DEVICES", ("cuda", "cpu"))
    path = str(tiny[MODELS[0]])
    registry = ModelRegistry(Config(models={"dense": ModelSettings("dense", path, context=256),
                                            "eager": ModelSettings("eager", path, cuda_graphs=False)},
                                    default="dense"))
    for name in ("dense", "eager"):
        registry.load(name)
    wait_until(lambda: all(e.state == "resident" for e in registry.entries.values()), 60)
    dense, eager = registry.entries["dense"], registry.entries["eager"]
    lane = graph_lane(dense.model)
    assert (dense.describe()["graphs"], lane.capacity, lane.max_k) == ("on", 256, MAX_DRAFT)
    assert (eager.describe()["graphs"], graph_lane(eager.model)) == ("off", None)
    registry.unload("dense")
    assert dense.describe()["graphs"] == "off"
    # with `compile = true` the lane's forwards are compiled, in the background, and captured again
    monkeypatch.setattr(registry_module, "COMPILE_BACKEND", "eager")
    registry.entries["dense"].settings = ModelSettings("dense", path, context=256, compile=True)
    registry.load("dense")
    wait_until(lambda: dense.state == "resident" and dense.compile != "compiling", 120)
    assert (dense.compile, dense.compile_error, graph_lane(dense.model).compiled) == ("on", "", True)
    registry.unload("dense")
    dense.settings = ModelSettings("dense", path, context=256)

    def no_capture(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(GraphLane, "__init__", no_capture)
    registry.load("dense")
    wait_until(lambda: dense.state == "resident", 60)
    assert (dense.graphs, graph_lane(dense.model)) == ("failed", None)
    assert "not permitted when stream is capturing" in dense.describe()["graphs_error"]
    prompt = chat_prompt(tiny[MODELS[0]], "Hello! Who are you?")
    assert len(_tokens(dense.model, prompt, _options(2))) == 40
