"""The engine's options object refuses bad settings where they are made, and the server's one
conversion from a wire request fills it as the request and the model's settings say."""

from types import SimpleNamespace

import pytest

from daemon.engine.options import GenerationOptions
from daemon.engine.sampling import SamplingParams
from daemon.serve.scheduler import generation_options
from mtpchat.protocol import DRAFT_AUTO, MAX_DRAFT, GenerateRequest

USER = ({"role": "user", "content": "hi"},)


@pytest.mark.parametrize("fields, problem", [
    ({"max_tokens": -1}, "max_tokens"),
    ({"draft_k": -1}, "draft k"),
    ({"draft_k": MAX_DRAFT + 1}, "draft k"),
    ({"draft_vocab": 0}, "draft_vocab"),
    ({"context": 0}, "context"),
    ({"stop": ("",)}, "stop"),
    ({"stop": ["x"]}, "stop"),
])
def test_bad_options_are_refused_at_once(fields, problem):
    with pytest.raises(ValueError, match=problem):
        GenerationOptions(**fields)


def test_options_are_frozen():
    options = GenerationOptions(max_tokens=0, draft_k=MAX_DRAFT, draft_vocab=1, context=1, stop=("x",))
    with pytest.raises(AttributeError):
        options.draft_k = 1


def _entry(draft, mtp=True, draft_vocab=None, context=4096):
    settings = SimpleNamespace(draft=draft, draft_vocab=draft_vocab)  # a ModelSettings' draft fields
    return SimpleNamespace(settings=settings, model=SimpleNamespace(mtp=object() if mtp else None), context=context)


def test_a_request_becomes_the_engine_options():
    request = GenerateRequest("r1", USER, max_tokens=7, temperature=0.5, top_p=0.9, top_k=3, seed=1, draft=2,
                              stop=("\n",))
    options = generation_options(request, _entry(draft=3, draft_vocab=64, context=100))
    assert options == GenerationOptions(max_tokens=7, sampling=SamplingParams(0.5, 3, 0.9, 1), draft_k=2,
                                        adaptive=False, draft_vocab=64, context=100, stop=("\n",))


def test_draft_setting_from_the_request_or_the_model():
    def draft_of(request_draft, model_draft, mtp=True):
        options = generation_options(GenerateRequest("r1", USER, draft=request_draft), _entry(model_draft, mtp))
        return options.draft_k, options.adaptive

    assert draft_of(None, 3) == (3, False)  # left out: the model's setting
    assert draft_of(None, DRAFT_AUTO) == (MAX_DRAFT, True)
    assert draft_of(DRAFT_AUTO, 1) == (MAX_DRAFT, True)
    assert draft_of(0, DRAFT_AUTO) == (0, False)
    assert draft_of(4, 2, mtp=False) == (0, False)  # no MTP head: plain decoding
