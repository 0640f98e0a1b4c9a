"""MTP speculative decoding is lossless: token-identical to plain decoding and to transformers, for
every draft length, every accept pattern and every stop condition — and the rollback is exact. Greedy
with repetition penalties too: the verify pass penalises each position with its own prefix."""

import pytest
import torch

from daemon.engine.drafter import MTPDrafter
from daemon.engine.options import GenerationOptions
from daemon.engine.sampling import SamplingParams
from daemon.engine.speculative import SpeculativeDecoder
from daemon.tools.oracle_drafter import OracleDrafter
from daemon.weights.loader import load_model
from mtpchat.protocol import ACCEPTANCE_RATE, DRAFTS, MAX_DRAFT, RUNNING_STATS, STATS
from tests.helpers import assert_scaled_close, chat_prompt, decode, generation, random_ids, reference_model

MODELS = ["qwen3.6-dense-tiny", "qwen3.6-moe-tiny"]


class ScriptedDrafter(OracleDrafter):
    """Step i's drafts are the plain continuation, wrong from slot accept_plan[i] on: so that step
    accepts exactly accept_plan[i] tokens. Records the MTP logits behind each first draft."""

    def __init__(self, model, max_len, truth: list[int], accept_plan: list[int]):
        self.plan = list(accept_plan)
        super().__init__(model, max_len, truth, errs=lambda step, slot: slot == self.plan[step])
        self.first_logits = []

    def choose(self, logits, params, generator, slot):
        if slot == 0:
            self.first_logits.append(logits[0].clone())
        return super().choose(logits, params, generator, slot)


@pytest.fixture(scope="module")
def models(tiny):
    return {name: load_model(tiny[name], device="cpu") for name in MODELS}


def _prompts(tiny, name):
    return [chat_prompt(tiny[name], "Hello! Who are you?"),
            chat_prompt(tiny[name], "Explain speculative decoding in one paragraph.", enable_thinking=False),
            random_ids(150, seed=21)[0].tolist()]  # crosses several DeltaNet chunks in prefill


@pytest.mark.parametrize("name", MODELS)
@torch.inference_mode()
def test_mtp_output_equals_plain_and_transformers_for_every_k(tiny, models, name):
    model, ref = models[name], reference_model(tiny[name])
    for prompt in _prompts(tiny, name):
        plain = decode(model, prompt, 24)
        expected = ref.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0, len(prompt):].tolist()
        assert plain == expected
        for k in range(1, MAX_DRAFT + 1):
            run = generation(model, prompt, 24, draft_k=k)
            assert run.tokens() == plain, f"k={k}"
            assert run.stats.drafts > 0 and run.stats.generated_tokens == 24
        run = generation(model, prompt, 24, draft_k=MAX_DRAFT, adaptive=True)
        assert run.tokens() == plain
        assert len(set(run.stats.drafted_per_position)) > 1, "the adaptive policy varied k"
        assert decode(model, prompt, 24, draft_k=2, draft_vocab=256) == plain


PENALISED = SamplingParams(temperature=0.0, repetition_penalty=1.3, presence_penalty=0.8, frequency_penalty=0.4)


@pytest.mark.parametrize("name", MODELS)
@torch.inference_mode()
def test_greedy_with_penalties_mtp_equals_plain_for_every_k(tiny, models, name):
    model, ref = models[name], reference_model(tiny[name])
    changed = 0
    for prompt in _prompts(tiny, name):
        plain = decode(model, prompt, 24, sampling=PENALISED)
        changed += plain != decode(model, prompt, 24)
        for k in range(1, 4):
            assert decode(model, prompt, 24, draft_k=k, sampling=PENALISED) == plain, f"k={k}"
            # the tiny heads are random: an oracle drafter gets drafts accepted, wrong from slot step % (k+1)
            # on, so later rows of a verify pass follow accepted drafts whose penalties they must count
            oracle = OracleDrafter(model, len(prompt) + 32, prompt + plain,
                                   errs=lambda step, slot: slot == step % (k + 1))
            run = generation(model, prompt, 24, draft_k=k, drafter=oracle, sampling=PENALISED)
            assert run.tokens() == plain, f"k={k}, oracle"
            assert run.stats.accepted_per_position[-1] > 0  # every slot, the last included, was accepted
        assert decode(model, prompt, 24, draft_k=2, draft_vocab=256, sampling=PENALISED) == plain
        # the repetition penalty alone is transformers' (prompt and reply tokens, HF/vLLM semantics)
        repetition = SamplingParams(repetition_penalty=1.3)
        expected = ref.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, repetition_penalty=1.3,
                                eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert decode(model, prompt, 24, sampling=repetition) == expected
        assert decode(model, prompt, 24, draft_k=3, sampling=repetition) == expected
    assert changed, "the penalties change some reply"


@torch.inference_mode()
def test_reduced_draft_vocabulary_drafts_only_the_first_ids(models):
    model = models["qwen3.6-moe-tiny"]
    for params in (SamplingParams(), SamplingParams(temperature=1.0, seed=3)):
        drafter = MTPDrafter(model, 64, vocab=100)
        _, hidden = model(torch.tensor([list(range(300, 320))]), model.new_cache(64), 0)
        drafter.extend(hidden, torch.tensor([list(range(301, 321))]), 0)
        drafts, probs = drafter.propose(4, params, torch.Generator().manual_seed(0))
        assert (drafts < 100).all()
        if probs is not None:
            assert probs.shape == (4, model.config.vocab_size) and probs[:, 100:].sum() == 0


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@torch.inference_mode()
def test_every_accept_pattern_emits_the_plain_tokens_and_rolls_back_exactly(models, k):
    model = models["qwen3.6-dense-tiny"]
    prompt = random_ids(40, seed=22)[0].tolist()
    truth = prompt + decode(model, prompt, 40)
    plan = list(range(k + 1)) + list(range(k, -1, -1))
    drafter = ScriptedDrafter(model, 128, truth, plan)
    decoder = SpeculativeDecoder(model, prompt, 128, GenerationOptions(draft_k=k), drafter=drafter)
    emitted = [decoder.prefill()]
    for accepted in plan:
        tokens, drafted = decoder.step(max_tokens=100)
        assert drafted == k and len(tokens) == accepted + 1
        emitted += tokens
        assert emitted == truth[len(prompt):len(prompt) + len(emitted)]
        assert decoder.length == len(prompt) + len(emitted) - 1

    # the trunk continues exactly as a fresh plain run (prefill, then one token at a time)
    sequence = prompt + emitted
    fresh = model.new_cache(len(sequence) + 1)
    _, prompt_hidden = model(torch.tensor([prompt]), fresh, 0)
    steps = [model(torch.tensor([[t]]), fresh, len(prompt) + i) for i, t in enumerate(emitted)]
    fresh_logits = steps[-1][0]
    fresh_hidden = torch.cat([prompt_hidden] + [hidden for _, hidden in steps], dim=1)
    next_logits, _ = model(torch.tensor([[decoder.token]]), decoder.cache, decoder.length)
    # the same logits by other chunkings (verify passes vs single steps): equal up to the scaled bar
    assert_scaled_close(next_logits[0, -1], fresh_logits[0, -1], "trunk after speculative steps")

    # and the MTP layer's cache holds exactly the accepted history: its next draft logits equal a
    # fresh MTP pass over all (trunk hidden h_i, token t_{i+1}) pairs
    drafter.plan.append(0)
    drafter.propose(1, decoder.sampling, None)
    pairs = (torch.tensor([sequence[1:]]), fresh_hidden[:, :-1])
    fresh_mtp, _ = model.mtp_forward(*pairs, model.new_mtp_cache(len(sequence)), 0)
    assert_scaled_close(drafter.first_logits[-1], fresh_mtp[0, -1], "MTP after speculative steps")


@pytest.mark.parametrize("name", MODELS)
@torch.inference_mode()
def test_stops_inside_a_draft_run_are_exact(models, name):
    model = models[name]
    prompt = random_ids(30, seed=23)[0].tolist()
    plain = decode(model, prompt, 30)
    truth = prompt + plain
    for k in range(1, 5):
        for limit in range(1, 9):  # the token limit falls at every slot of the first runs
            drafter = ScriptedDrafter(model, 128, truth, [k] * 30)
            assert decode(model, prompt, limit, draft_k=k, drafter=drafter) == plain[:limit]
        for index in (3, 6, 10):  # a stop token accepted in the middle of a fully accepted run
            stop = plain[index]
            first = plain.index(stop)
            drafter = ScriptedDrafter(model, 128, truth, [k] * 30)
            run = generation(model, prompt, 30, {stop}, draft_k=k, drafter=drafter)
            assert run.tokens() == plain[:first + 1] and run.stats.finish_reason == "stop"


@torch.inference_mode()
def test_context_limit_ends_generation_exactly(tiny):
    model = load_model(tiny["qwen3.6-dense-tiny"], device="cpu")
    limit = model.config.max_position_embeddings
    prompt = random_ids(limit - 5, seed=24)[0].tolist()
    run = generation(model, prompt, 50)
    plain = run.tokens()
    assert len(plain) == 5 and run.stats.finish_reason == "context"  # prompt + reply == context
    run = generation(model, prompt, 50, draft_k=3)
    assert run.tokens() == plain
    assert run.stats.finish_reason == "context"


@torch.inference_mode()
def test_stats_are_consistent(models):
    model = models["qwen3.6-moe-tiny"]
    prompt = random_ids(20, seed=25)[0].tolist()
    truth = prompt + decode(model, prompt, 60)
    plan = [3, 0, 1, 3, 2, 2, 0, 3] * 4
    drafter = ScriptedDrafter(model, 128, truth, plan)
    run = generation(model, prompt, 40, draft_k=3, drafter=drafter)
    steps = list(run)
    stats, provenance = run.stats, [step.drafted for step in steps]
    assert [step.token for step in steps] == truth[len(prompt):len(prompt) + 40]
    assert stats.generated_tokens == len(provenance) == 40
    assert sum(provenance) == stats.accepted_tokens
    # the scripted plan, read back from the flags: each verifier token closes a step's run of drafts
    runs = "".join("d" if p else "v" for p in provenance).split("v")[1:-1]
    assert [len(r) for r in runs] == plan[:len(runs)]
    # every emitted token is the prefill token, an accepted draft, or one per verification
    assert stats.generated_tokens == 1 + stats.drafts + stats.accepted_tokens
    per_position = stats.accepted_per_position
    assert per_position == sorted(per_position, reverse=True) and sum(per_position) == stats.accepted_tokens
    assert stats.acceptance_rate == stats.accepted_tokens / stats.drafted_tokens
    assert stats.mean_acceptance_length == 1 + stats.accepted_tokens / stats.drafts
    assert stats.prefill_tok_s > 0 and stats.decode_tok_s > 0 and stats.peak_memory_bytes > 0
    wire = stats.as_dict()  # the stats map under the protocol's keys, derived figures included
    assert tuple(wire) == STATS and set(RUNNING_STATS) <= set(wire)
    assert wire[ACCEPTANCE_RATE] == stats.acceptance_rate and wire[DRAFTS] == stats.drafts
    assert stats.as_dict(RUNNING_STATS) == {key: wire[key] for key in RUNNING_STATS}


@torch.inference_mode()
def test_steps_mark_accepted_drafts_as_drafted(models):
    model = models["qwen3.6-dense-tiny"]
    prompt = random_ids(20, seed=27)[0].tolist()
    truth = prompt + decode(model, prompt, 30)
    right = OracleDrafter(model, 128, truth, errs=lambda step, slot: False)
    steps = list(generation(model, prompt, 10, draft_k=2, drafter=right))
    assert [step.token for step in steps] == truth[len(prompt):len(prompt) + 10]
    # prefill's token is the verifier's; then every step: two accepted drafts, then the verifier's bonus
    assert [step.drafted for step in steps] == [False] + [True, True, False] * 3
    wrong = OracleDrafter(model, 128, truth, errs=lambda step, slot: True)
    steps = list(generation(model, prompt, 10, draft_k=2, drafter=wrong))
    assert [step.token for step in steps] == truth[len(prompt):len(prompt) + 10]
    assert not any(step.drafted for step in steps)


@torch.inference_mode()
def test_seeded_sampling_is_reproducible_and_k_must_be_valid(models):
    model = models["qwen3.6-dense-tiny"]
    prompt = random_ids(10, seed=26)[0].tolist()
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=7)
    for k in (0, 2):
        first = decode(model, prompt, 30, draft_k=k, sampling=params)
        assert first == decode(model, prompt, 30, draft_k=k, sampling=params)
    other = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=8)
    assert decode(model, prompt, 30, sampling=other) != decode(model, prompt, 30, sampling=params)
    with pytest.raises(ValueError, match=f"draft k must be 0..{MAX_DRAFT}"):
        decode(model, prompt, 5, draft_k=MAX_DRAFT + 1)
