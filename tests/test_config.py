"""config.toml as users write it: models with placement and context, per-device memory limits and
state cache budgets, and a clear error naming the file for every mistake."""

import pytest

from mtpchat.config import DEFAULT_STATE_CACHE, DEMO, TINY, OpenAISettings, format_size, load_config, parse_size
from mtpchat.paths import config_dir


def write(text: str) -> None:
    config_dir().mkdir(parents=True, exist_ok=True)
    (config_dir() / "config.toml").write_text(text)


def test_no_file_means_the_demo_model_and_default_budgets():
    config = load_config()
    assert list(config.models) == [DEMO, TINY] and config.default == DEMO
    assert config.models[DEMO].draft_vocab == 8192 and config.models[DEMO].draft == "auto"  # measured best (README)
    assert config.models[DEMO].quantization.describe() == "int4 (group 32)"  # its shipped precision (README)
    assert not config.models[TINY].load_at_start  # built on request only
    assert config.max_memory == {} and config.state_cache == DEFAULT_STATE_CACHE


def test_models_devices_and_state_cache_are_read():
    write('default = "moe"\n'
          '[models.dense]\npath = "Qwen/Qwen3.6-27B"\ndevice = ["cuda:0", "cuda:1"]\ncontext = 65536\n'
          '[models.moe]\npath = "/ckpt/moe"\ndevice = "cuda:1"\ndraft = "auto"\ndraft_vocab = 8192\n'
          'load_at_start = false\n'
          '[devices."cuda:0"]\nmax_memory = "60GiB"\nstate_cache = "8GiB"\n'
          '[devices.cpu]\nmax_memory = 1000000\n'
          '[state_cache]\nbudget = "1.5 GB"\n'
          '[daemon]\nmax_streams = 2\nprefill_chunk = 256\n')
    config = load_config()
    assert config.daemon.describe() == {"max_streams": 2, "max_queued": 16, "prefill_chunk": 256,
                                        "max_path_models": 2}
    assert config.default == "moe"
    assert config.models["dense"].devices == ("cuda:0", "cuda:1") and config.models["dense"].context == 65536
    assert config.models["moe"].devices == ("cuda:1",) and not config.models["moe"].load_at_start
    assert config.models["moe"].draft_vocab == 8192 and config.models["dense"].draft_vocab is None
    assert config.max_memory == {"cuda:0": 60 * 2**30, "cpu": 1_000_000}
    assert config.state_cache == 1_500_000_000 and config.state_cache_by_device == {"cuda:0": 8 * 2**30}


def test_a_models_sampling_table_is_read_and_checked_as_the_wire_checks_requests():
    write('[models.dense]\npath = "Qwen/Qwen3.6-27B"\n[models.dense.sampling]\ntemperature = 1\ntop_k = 20\n'
          'presence_penalty = 1.5\n[models.moe]\npath = "/ckpt/moe"\n')
    config = load_config()
    assert config.models["dense"].sampling == {"temperature": 1.0, "top_k": 20, "presence_penalty": 1.5}
    assert isinstance(config.models["dense"].sampling["temperature"], float)  # as a request's would be
    assert config.models["moe"].sampling == {}  # the checkpoint's own defaults


@pytest.mark.parametrize("text,message", [
    ('[models.a]\npath = "x"\ndraft = 9\n', "draft must be one of"),
    ('[models.a]\npath = "x"\ndevice = 3\n', "device must be a name"),
    ('[models.a]\npath = "x"\ndraft_vocab = 0\n', "draft_vocab must be a positive number"),
    ('[models.a]\npath = "x"\ncontext = "long"\n', "context must be a number of tokens"),
    ('[models.a]\npath = "x"\n[devices.cpu]\nmax_memory = "lots"\n', "'lots' is not a size"),
    ('[models.a]\npath = "x"\nwhat = 1\n', "unexpected keyword argument 'what'"),
    ('[models.a]\npath = "x"\n[models.a.sampling]\ntemprature = 0.5\n', r"\[models.a.sampling\] has unknown keys"),
    ('[models.a]\npath = "x"\n[models.a.sampling]\ntop_p = 0\n', r"\[models.a.sampling\] top_p: must be greater"),
    ('[models.a]\npath = "x"\n[models.a.sampling]\npresence_penalty = "high"\n', "presence_penalty: must be a number"),
    ('[models.a]\npath = "x"\nsampling = 0.5\n', "must be a table of sampling settings"),
    ('default = "b"\n[models.a]\npath = "x"\n', "default model 'b' is not among"),
    ('[models.a\n', "config.toml"),
    ('[daemon]\nmax_streams = 0\n', r"\[daemon\] max_streams must be a whole number >= 1"),
    ('[daemon]\nmax_queued = -1\n', r"\[daemon\] max_queued must be a whole number >= 0"),
    ('[daemon]\nprefill_chunk = "big"\n', "prefill_chunk must be a whole number"),
])
def test_mistakes_are_named_with_the_file(text, message):
    write(text)
    with pytest.raises(ValueError, match=message) as error:
        load_config()
    assert str(config_dir() / "config.toml") in str(error.value)


def test_sizes_round_trip_in_the_units_people_use():
    assert parse_size("20GiB") == 20 * 2**30 and parse_size("512 MiB") == 512 * 2**20 and parse_size(7) == 7
    assert format_size(53.9 * 2**30) == "53.90 GiB" and format_size(12.5 * 2**20) == "12.50 MiB"
    for bad in ("-1", "1 parsec", -5, True):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_openai_table_is_read_and_a_key_is_required_beyond_loopback(tmp_path):
    assert load_config().openai == OpenAISettings()  # no [openai]: no HTTP API
    write('[openai]\nlisten = "127.0.0.1:8080"\ncors_origins = ["http://localhost:3000"]\n')
    settings = load_config().openai
    assert settings.address == ("127.0.0.1", 8080) and settings.api_key() is None
    assert settings.cors_origins == ("http://localhost:3000",)
    assert OpenAISettings("[::1]:8080").address == ("::1", 8080)
    for bad in ('listen = "0.0.0.0:8080"', 'listen = "localhost:8080"', 'listen = "127.0.0.1:99999"',
                'listen = "[::1]"', 'cors_origins = [1]', 'bogus = 1'):
        write(f"[openai]\n{bad}\n")
        with pytest.raises(ValueError, match="config.toml"):
            load_config()
    key = tmp_path / "openai.key"
    key.write_text("sk-local\n")
    write(f'[openai]\nlisten = "0.0.0.0:8080"\napi_key_file = "{key}"\n')
    assert load_config().openai.api_key() == "sk-local"
    key.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_config().openai.api_key()
