import pytest
from transformers import AutoTokenizer

from daemon.tiny.tokenizer import build_tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("tok")
    ids = build_tokenizer(out_dir)
    return ids, AutoTokenizer.from_pretrained(out_dir)


def test_vocab_size_and_special_ids(built):
    ids, tok = built
    assert len(tok) == 1024
    assert set(SPECIALS) <= set(ids)
    assert len(set(ids.values())) == len(ids)
    for token in SPECIALS:
        assert tok.encode(token) == [ids[token]]
        assert tok.convert_tokens_to_ids(token) == ids[token]
    assert tok.eos_token == "<|im_end|>"
    assert tok.eos_token_id == ids["<|im_end|>"]
    assert tok.pad_token_id == ids["<|endoftext|>"]
    assert tok.bos_token is None


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! How are you today?",
        "naïve café, 日本語, Ελληνικά, emoji 🙂🚀 and tabs\tand\nnewlines",
        "def f(x: int) -> int:\n    return x ** 2  # square\n",
        "  leading and trailing spaces  ",
        "<|im_start|>user\nhi<|im_end|>\n<think>\nhmm\n</think>\n\nok",
        "",
    ],
)
def test_round_trip(built, text):
    _, tok = built
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_embedded_in_text_stay_single(built):
    ids, tok = built
    encoded = tok.encode("a<|im_end|>b<think>c</think>")
    for token in ["<|im_end|>", "<think>", "</think>"]:
        assert encoded.count(ids[token]) == 1
    # Like Qwen3, think markers survive skip_special_tokens; ChatML markers do not.
    assert tok.decode(encoded, skip_special_tokens=True) == "ab<think>c</think>"


def test_chat_template_generation_prompt(built):
    _, tok = built
    prefix = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"

    def render(**kwargs):
        return tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True, **kwargs)

    assert render() == prefix + "<|im_start|>assistant\n"
    assert render(enable_thinking=True) == prefix + "<|im_start|>assistant\n"
    assert render(enable_thinking=False) == prefix + "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    no_prompt = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=False)
    assert no_prompt == prefix


def test_chat_template_strips_history_thinking(built):
    _, tok = built
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>x</think>\n\nanswer"},
        {"role": "user", "content": "q2"},
    ]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nq1<|im_end|>\n"
        "<|im_start|>assistant\nanswer<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_build_is_deterministic(tmp_path):
    first = build_tokenizer(tmp_path / "a")
    second = build_tokenizer(tmp_path / "b")
    assert first == second
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_vocab_size_beyond_corpus_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        build_tokenizer(tmp_path, vocab_size=100_000)
