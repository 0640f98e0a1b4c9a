"""The engine's options object refuses bad settings where they are made, and the server's one
conversion from a wire request fills it as the request and the model's settings say: each sampling
setting from the request, else config.toml, else the checkpoint (per thinking mode), else greedy."""

from types import SimpleNamespace

import pytest

from daemon.engine.options import GenerationOptions
from daemon.engine.sampling import SamplingParams
from daemon.serve.registry import ModelEntry
from daemon.serve.scheduler import generation_options
from daemon.weights.sampling_defaults import ModelSampling
from mtpchat.config import ModelSettings
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


def _entry(draft=2, mtp=True, draft_vocab=None, context=4096, sampling=None, checkpoint=ModelSampling()):
    entry = ModelEntry(ModelSettings("m", "/m", draft=draft, draft_vocab=draft_vocab, sampling=sampling or {}),
                       state="resident", context=context,
                       model=SimpleNamespace(mtp=object() if mtp else None, device="cpu", dtype="torch.float32"),
                       tokenizer=SimpleNamespace(chat_template=None))
    entry.checkpoint_sampling = checkpoint
    return entry


def test_a_request_becomes_the_engine_options():
    sampling = dict(temperature=0.5, top_p=0.9, top_k=3, min_p=0.1, repetition_penalty=1.2, presence_penalty=0.5,
                    frequency_penalty=-0.5)
    request = GenerateRequest("r1", USER, max_tokens=7, **sampling, seed=1, draft=2, stop=("\n",))
    options = generation_options(request, _entry(draft=3, draft_vocab=64, context=100))
    assert options == GenerationOptions(max_tokens=7, sampling=SamplingParams(**sampling, seed=1), draft_k=2,
                                        adaptive=False, draft_vocab=64, context=100, stop=("\n",))


QWEN = ModelSampling({"temperature": 0.6, "top_p": 0.95, "top_k": 20},
                     {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0, "presence_penalty": 1.5})


def test_sampling_comes_from_the_request_then_config_then_the_checkpoint_then_greedy():
    def sampling(entry, thinking=True, **fields):
        return generation_options(GenerateRequest("r1", USER, thinking=thinking, **fields), entry).sampling

    assert sampling(_entry()) == SamplingParams()  # nothing anywhere: built-in greedy
    assert sampling(_entry(checkpoint=QWEN)) == SamplingParams(temperature=0.6, top_p=0.95, top_k=20)
    assert sampling(_entry(checkpoint=QWEN), thinking=False) == SamplingParams(
        temperature=0.7, top_p=0.8, top_k=20, presence_penalty=1.5)
    configured = _entry(sampling={"temperature": 0.3, "repetition_penalty": 1.1}, checkpoint=QWEN)
    assert sampling(configured) == SamplingParams(temperature=0.3, top_p=0.95, top_k=20, repetition_penalty=1.1)
    assert sampling(configured, thinking=False, top_k=0, seed=5) == SamplingParams(
        temperature=0.3, top_p=0.8, top_k=0, presence_penalty=1.5, repetition_penalty=1.1, seed=5)
    assert sampling(configured, temperature=0.0).greedy  # greedy stays one field away
    described = configured.describe()
    assert described["sampling"] == {"temperature": 0.3, "top_k": 20, "top_p": 0.95, "min_p": 0.0,
                                     "repetition_penalty": 1.1, "presence_penalty": 0.0, "frequency_penalty": 0.0}
    assert described["sampling_no_thinking"]["presence_penalty"] == 1.5


def test_draft_setting_from_the_request_or_the_model():
    def draft_of(request_draft, model_draft, mtp=True):
        options = generation_options(GenerateRequest("r1", USER, draft=request_draft), _entry(model_draft, mtp))
        return options.draft_k, options.adaptive

    assert draft_of(None, 3) == (3, False)  # left out: the model's setting
    assert draft_of(None, DRAFT_AUTO) == (MAX_DRAFT, True)
    assert draft_of(DRAFT_AUTO, 1) == (MAX_DRAFT, True)
    assert draft_of(0, DRAFT_AUTO) == (0, False)
    assert draft_of(4, 2, mtp=False) == (0, False)  # no MTP head: plain decoding


def test_checkpoint_defaults_are_generation_config_and_for_qwen_without_thinking_its_card(tmp_path, capfd):
    from daemon.weights.sampling_defaults import QWEN_INSTRUCT, checkpoint_sampling

    def checkpoint(model_type, generation=None):
        directory = tmp_path / model_type
        directory.mkdir(exist_ok=True)
        (directory / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
        if generation is not None:
            (directory / "generation_config.json").write_text(generation)
        return checkpoint_sampling(directory)

    shipped = '{"do_sample": true, "temperature": 0.6, "top_k": 20, "top_p": 0.95, "eos_token_id": [1, 2]}'
    qwen = checkpoint("qwen3_5", shipped)
    assert qwen.defaults(True) == {"temperature": 0.6, "top_k": 20, "top_p": 0.95}
    assert qwen.defaults(False) == QWEN_INSTRUCT
    llama = checkpoint("llama", '{"temperature": 0.2, "top_p": 0.9, "min_p": 2, "do_sample": false}')
    # as vLLM reads it: do_sample is ignored
    assert llama.defaults(True) == llama.defaults(False) == {"temperature": 0.2, "top_p": 0.9}
    assert "min_p: must be at least 0 and at most 1; ignored" in capfd.readouterr().err
    assert checkpoint("qwen3") == ModelSampling()  # no generation_config.json: greedy


def test_a_resident_model_says_whether_its_chat_template_has_a_thinking_mode():
    """The TUI shows and toggles thinking only where the template reads `enable_thinking` (the demo's
    SmolLM2 template does not); the daemon, which holds the tokenizer, says which."""
    entry = _entry()
    entry.tokenizer = SimpleNamespace(chat_template="{% if enable_thinking is false %}<think></think>{% endif %}")
    assert entry.describe()["thinking_mode"] is True
    entry.tokenizer = SimpleNamespace(chat_template="{{ messages[0]['content'] }}")
    assert entry.describe()["thinking_mode"] is False
