"""FastSampling: do_sample's distribution (temperature, top-k, top-p) drawn without a full sort or multinomial."""

import pytest
import torch
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from openrs_nb.generation import FastSampling, fast_generate, fast_sampling


def transformers_probabilities(scores, temperature, top_k, top_p):
    """What generate(do_sample=True) draws from: its own warpers in its order, then softmax."""
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores.double(), dim=-1)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.6, 0, 0.95), (1.0, 0, 1.0), (1.0, 50, 0.9), (0.7, 0, 0.5),
                                                     (1.3, 0, 0.99), (1.0, 7, 1.0)])
def test_the_distribution_is_the_warpers_one(temperature, top_k, top_p):
    torch.manual_seed(0)
    # Rows from peaked (a nucleus of 1 token) to flat (a nucleus far beyond the 64 candidates: the full-sort path)
    scores = torch.randn(24, 5000) * torch.linspace(0.5, 12, 24)[:, None]
    scores[3, :10] = float("-inf")  # as min_new_tokens sets eos
    ours = FastSampling(temperature, top_k, top_p, candidates=64).probabilities(scores.clone())
    theirs = transformers_probabilities(scores.clone(), temperature, top_k, top_p)
    assert torch.equal(ours > 0, theirs > 0)  # the same tokens kept
    assert (ours - theirs).abs().max() < 1e-6
    if top_p < 1.0 and not top_k:  # both paths ran: some rows' nucleus fits the candidates, some does not
        kept = (ours > 0).sum(dim=-1)
        assert kept.min() < 64 < kept.max()


@pytest.mark.parametrize("candidates", [32, 8])  # the 20-token nucleus within the candidates, and beyond them
def test_the_draws_follow_the_distribution(candidates):
    torch.manual_seed(1)
    scores = torch.randn(1, 40)
    sampler = FastSampling(temperature=0.8, top_p=0.9, candidates=candidates)
    probs = sampler.probabilities(scores)[0]
    n = 40_000
    one_hot = sampler(None, scores.expand(n, -1))
    assert one_hot.shape == (n, 40) and torch.equal((one_hot == 0).sum(dim=-1), torch.ones(n, dtype=torch.long))
    draws = one_hot.argmax(dim=-1)
    counts = torch.bincount(draws, minlength=40).double()
    assert counts[probs == 0].sum() == 0  # nothing outside the nucleus
    kept = probs > 0
    expected = n * probs[kept]
    chi2 = float(((counts[kept] - expected) ** 2 / expected).sum())
    dof = int(kept.sum()) - 1
    assert dof >= 5 and chi2 < dof + 5 * (2 * dof) ** 0.5  # a 5-sigma bound on Pearson's statistic
    # A draw shifted by one token (an off-by-one in the inverse CDF) fails the same bound.
    shifted = torch.roll(counts, 1)
    assert float(((shifted[kept] - expected) ** 2 / expected).sum()) > dof + 5 * (2 * dof) ** 0.5


def test_the_draws_repeat_under_the_same_seed():
    scores = torch.randn(8, 300)
    torch.manual_seed(5)
    a = FastSampling(top_p=0.95)(None, scores).argmax(dim=-1)
    torch.manual_seed(5)
    b = FastSampling(top_p=0.95)(None, scores).argmax(dim=-1)
    assert torch.equal(a, b)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="temperature > 0"):
        FastSampling(temperature=0)
    with pytest.raises(ValueError, match="0 < top_p <= 1"):
        FastSampling(top_p=1.5)


def test_only_plain_sampling_takes_the_fast_path():
    plain = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.95, top_k=0, max_new_tokens=4)
    sampler = fast_sampling(plain)
    assert (sampler.temperature, sampler.top_k, sampler.top_p) == (0.6, 0, 0.95)
    for other in (dict(do_sample=False), dict(min_p=0.1), dict(typical_p=0.5), dict(num_beams=2)):
        assert fast_sampling(GenerationConfig(**{**plain.to_diff_dict(), **other})) is None, other


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def test_fast_generate_samples_without_multinomial(tiny, monkeypatch):
    ids = torch.randint(3, 96, (4, 6))

    def no_multinomial(*args, **kwargs):
        raise AssertionError("torch.multinomial was called")

    monkeypatch.setattr(torch, "multinomial", no_multinomial)
    config = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=9, min_new_tokens=9,
                              pad_token_id=0, eos_token_id=2)
    torch.manual_seed(3)
    a = fast_generate(tiny, input_ids=ids, generation_config=config)
    torch.manual_seed(3)
    b = fast_generate(tiny, input_ids=ids, generation_config=config)
    assert a.shape == (4, 15) and torch.equal(a, b)
    assert config.do_sample is True and config.temperature == 0.7  # the caller's config is left as it was
    assert not (a[:, 6:] == 2).any()  # min_new_tokens still holds: eos is masked before the draw
    # Keyword arguments, as generation.generate passes them, take the same path.
    torch.manual_seed(3)
    c = fast_generate(tiny, input_ids=ids, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=9,
                      min_new_tokens=9, pad_token_id=0, eos_token_id=2)
    assert torch.equal(a, c)
    # What it does not cover goes to transformers' own sampling (here: the patched multinomial).
    with_min_p = GenerationConfig(**{**config.to_diff_dict(), "min_p": 0.1})
    with pytest.raises(AssertionError, match="multinomial was called"):
        fast_generate(tiny, input_ids=ids, generation_config=with_min_p)


def test_fast_generate_takes_generate_s_positional_inputs(tiny):
    ids = torch.randint(3, 96, (2, 5))
    torch.manual_seed(4)
    a = fast_generate(tiny, ids, do_sample=True, max_new_tokens=3, pad_token_id=0)
    torch.manual_seed(4)
    b = fast_generate(tiny, input_ids=ids, do_sample=True, max_new_tokens=3, pad_token_id=0)
    assert a.shape == (2, 8) and torch.equal(a, b)
    assert torch.equal(fast_generate(tiny, ids, max_new_tokens=3, pad_token_id=0),  # greedy: transformers' own
                       tiny.generate(ids, max_new_tokens=3, pad_token_id=0))


def test_fast_generate_uses_the_model_s_own_sampling_defaults(tiny):
    # Settings the call leaves unset come from model.generation_config, as in generate: here its top_k.
    ids = torch.randint(3, 96, (256, 4))
    with torch.no_grad():
        top3 = tiny(input_ids=ids).logits[:, -1].topk(3).indices
    tiny.generation_config.top_k = 3
    try:
        torch.manual_seed(0)
        out = fast_generate(tiny, input_ids=ids, do_sample=True, max_new_tokens=1, pad_token_id=0)
    finally:
        tiny.generation_config.top_k = None
    assert (out[:, -1:] == top3).any(dim=-1).all()
    torch.manual_seed(0)  # without that top_k the draws leave the top 3 (a near-uniform random model)
    free = fast_generate(tiny, input_ids=ids, do_sample=True, top_k=0, max_new_tokens=1, pad_token_id=0)
    assert not (free[:, -1:] == top3).any(dim=-1).all()


def test_fast_generate_adds_no_warnings_for_a_sampling_model(caplog):
    import transformers

    # A model that samples by default (as DeepSeek-R1-Distill's generation_config.json: temperature 0.6, top_p 0.95)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.update(do_sample=True, temperature=0.6, top_p=0.95, top_k=20)
    transformers.logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            out = fast_generate(model, torch.randint(3, 96, (2, 4)), max_new_tokens=3)
    finally:
        transformers.logging.disable_propagation()
    assert out.shape == (2, 7)
    assert not [r for r in caplog.records if r.name.startswith("transformers")], caplog.text
