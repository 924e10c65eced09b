"""openrs_nb.grpo: hand-worked values for Eq. 1–3, and equality with TRL 1.16's GRPOTrainer loss."""

import math

import pytest
import torch

from openrs_nb import grpo

# ---------------------------------------------------------------- Eq. 3: group advantages


def test_group_advantages_hand_worked():
    # group 1: mean 0.25, sample std sqrt((0.75² + 3·0.25²)/3) = 0.5; group 2: all equal -> no signal
    adv = grpo.group_advantages([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0], num_generations=4)
    expected = [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(adv, torch.tensor(expected), rtol=0, atol=1e-6)


def test_group_advantages_unscaled_is_dr_grpo():
    adv = grpo.group_advantages([3.0, 1.0, 0.0, 2.0], num_generations=2, scale=False)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, -1.0, 1.0]))


def test_group_advantages_match_trl_formula():
    from trl.trainer.utils import nanstd

    r = torch.tensor([0.3, 2.0, 1.0, 1.5, 0.0, 0.0, 3.0, -1.0, 0.5])
    grouped = r.view(-1, 3)
    trl = (grouped - grouped.mean(1, keepdim=True)) / (nanstd(grouped, dim=1).unsqueeze(1) + 1e-4)
    torch.testing.assert_close(grpo.group_advantages(r, 3), trl.view(-1))



def _expected_update(theta, arm_rewards, G, advantage):
    """E over every outcome of one group of G pulls of a softmax bandit of ∇ (1/G) Σ_i A_i log π(a_i)."""
    import itertools

    log_pi = torch.log_softmax(theta, 0)
    total = torch.zeros_like(theta)
    for arms in itertools.product(range(len(arm_rewards)), repeat=G):
        arms = list(arms)
        adv = advantage(arm_rewards[arms]).detach()
        (grad,) = torch.autograd.grad((adv * log_pi[arms]).mean(), theta, retain_graph=True)
        total += log_pi[arms].sum().exp().detach() * grad
    return total


@pytest.mark.parametrize("G", [2, 3])
def test_group_mean_baseline_scales_the_gradient_by_g_minus_1_over_g(G):
    theta = torch.tensor([0.4, -0.3, 0.1], dtype=torch.float64, requires_grad=True)
    arm_rewards = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    (true_grad,) = torch.autograd.grad((torch.softmax(theta, 0) * arm_rewards).sum(), theta)
    group_mean = _expected_update(theta, arm_rewards, G, lambda r: r - r.mean())
    torch.testing.assert_close(group_mean, (G - 1) / G * true_grad, rtol=0, atol=1e-12)
    leave_one_out = _expected_update(theta, arm_rewards, G, lambda r: r - (r.sum() - r) / (G - 1))
    torch.testing.assert_close(leave_one_out, true_grad, rtol=0, atol=1e-12)
    if G == 3:  # dividing by the group std: no longer a multiple of the true gradient
        scaled = _expected_update(theta, arm_rewards, G, lambda r: (r - r.mean()) / (r.std() + 1e-4))
        ratios = scaled / true_grad
        assert (ratios.max() - ratios.min()).item() > 0.1

@pytest.mark.parametrize(
    "rewards, g, match",
    [([1.0, 0.0, 1.0], 2, "groups of num_generations=2"), ([1.0, 0.0], 1, "at least 2"),
     ([1.0, float("nan")], 2, "NaN"), ([[1.0, 0.0]], 2, "one-dimensional")],
)
def test_group_advantages_rejects_bad_input(rewards, g, match):
    with pytest.raises(ValueError, match=match):
        grpo.group_advantages(rewards, g)


# ---------------------------------------------------------------- Eq. 2: k3


def test_kl_k3_hand_worked():
    kl = grpo.kl_k3(torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3])))
    # r = π_ref/π = 0.5: 0.5 − ln 0.5 − 1 = ln 2 − 0.5; equal probabilities give exactly 0
    torch.testing.assert_close(kl, torch.tensor([math.log(2) - 0.5, 0.0]))



def test_k3_expected_gradient_is_the_forward_kl_gradient():
    g = torch.Generator().manual_seed(0)
    for spread, close_to_reverse in ((0.05, True), (1.0, False)):
        theta = torch.randn(5, dtype=torch.float64, generator=g).requires_grad_()
        logq = torch.log_softmax(theta.detach() + spread * torch.randn(5, dtype=torch.float64, generator=g), 0)
        logp = torch.log_softmax(theta, 0)
        expected = torch.zeros(5, dtype=torch.float64)
        for x in range(5):  # E_{x ~ π_θ}[∇θ k3(x)] with the sampled token held fixed
            (grad_x,) = torch.autograd.grad(grpo.kl_k3(logp[x], logq[x]), theta, retain_graph=True)
            expected += logp[x].exp().detach() * grad_x
        (forward,) = torch.autograd.grad((logq.exp() * (logq - logp)).sum(), theta, retain_graph=True)
        (reverse,) = torch.autograd.grad((logp.exp() * (logp - logq)).sum(), theta)
        torch.testing.assert_close(expected, forward, rtol=0, atol=1e-12)
        rel = ((expected - reverse).norm() / reverse.norm()).item()
        assert (rel < 0.05) if close_to_reverse else (rel > 0.2), (spread, rel)

# ---------------------------------------------------------------- Eq. 1: clipping


@pytest.mark.parametrize(
    "ratio, adv, loss, grad, clipped",
    [
        (1.5, 1.0, -1.2, 0.0, "high"),  # A>0, ρ>1+ε: flat at (1+ε)A, no push further up
        (0.5, 1.0, -0.5, -0.5, None),  # A>0, ρ<1−ε: min keeps ρA, gradient −ρA restores the token
        (0.5, -1.0, 0.8, 0.0, "low"),  # A<0, ρ<1−ε: flat at (1−ε)A
        (1.5, -1.0, 1.5, 1.5, None),  # A<0, ρ>1+ε: min keeps ρA, gradient pulls it back down
        (1.1, 1.0, -1.1, -1.1, None),  # inside the trust region: plain ρA
    ],
)
def test_clipping_edge_cases(ratio, adv, loss, grad, clipped):
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=torch.float64)
    out, stats = grpo.grpo_loss(logp, old, None, torch.tensor([adv]), torch.ones(1, 1), epsilon=0.2, beta=0.0)
    out.backward()
    assert out.item() == pytest.approx(loss)
    assert logp.grad.item() == pytest.approx(grad)  # d(−ρA)/d logp = −ρA, 0 when clipped
    assert stats["clip_ratio/high_mean"] == (1.0 if clipped == "high" else 0.0)
    assert stats["clip_ratio/low_mean"] == (1.0 if clipped == "low" else 0.0)
    assert "kl" not in stats



@pytest.mark.parametrize("log_ratio, adv, clipped", [
    (math.log(0.8) + 0.01, -1.0, False), (math.log(0.8) - 0.01, -1.0, True),  # lower bound log(1 − ε) = −0.223
    (math.log(1.2) - 0.01, 1.0, False), (math.log(1.2) + 0.01, 1.0, True),  # upper bound log(1 + ε) = +0.182
    (-0.2, -1.0, False),  # |−0.2| > log 1.2, yet inside: the range is not symmetric in log space
])
def test_clip_range_in_log_space(log_ratio, adv, clipped):
    _, stats = grpo.grpo_loss(torch.tensor([[log_ratio]]), torch.zeros(1, 1), None, torch.tensor([adv]),
                              torch.ones(1, 1), epsilon=0.2, beta=0.0)
    assert stats["clip_ratio/region_mean"] == (1.0 if clipped else 0.0)

def test_kl_gradient_pulls_towards_reference():
    logp = torch.log(torch.tensor([[0.5]])).requires_grad_()
    ref = torch.log(torch.tensor([[0.25]]))
    loss, stats = grpo.grpo_loss(logp, None, ref, torch.zeros(1), torch.ones(1, 1), beta=0.04)
    loss.backward()
    # A = 0 leaves β·k3; d k3 / d logp = 1 − π_ref/π = 0.5 > 0: descent lowers the over-confident token
    assert loss.item() == pytest.approx(0.04 * (math.log(2) - 0.5), rel=1e-6)
    assert logp.grad.item() == pytest.approx(0.04 * 0.5, rel=1e-6)
    assert stats["kl"] == pytest.approx(math.log(2) - 0.5, rel=1e-6)


# ---------------------------------------------------------------- normalisations


def _two_sequences():
    """Lengths 1 and 3 (padded to 4), on-policy, A = [2, 1]: per-token loss is −A."""
    logp = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]])
    return logp, mask, torch.tensor([2.0, 1.0])


@pytest.mark.parametrize(
    "loss_type, kwargs, loss, token_grads",
    [
        ("grpo", {}, (-2 / 1 - 3 / 3) / 2, (-2 / (2 * 1), -1 / (2 * 3))),  # mean per sequence, then over them
        ("bnpo", {}, (-2 - 3) / 4, (-2 / 4, -1 / 4)),  # Σ over 4 real tokens
        ("dr_grpo", {"max_completion_length": 8}, (-2 - 3) / (2 * 8), (-2 / 16, -1 / 16)),  # B × L_max
        ("dapo", {"num_items_in_batch": 10}, (-2 - 3) / 10, (-2 / 10, -1 / 10)),  # tokens of the whole batch
        ("dapo", {}, (-2 - 3) / 4, (-2 / 4, -1 / 4)),  # one micro-batch: same as bnpo
    ],
)
def test_each_loss_type_hand_worked(loss_type, kwargs, loss, token_grads):
    logp, mask, adv = _two_sequences()
    out, _ = grpo.grpo_loss(logp, None, None, adv, mask, beta=0.0, loss_type=loss_type, **kwargs)
    out.backward()
    assert out.item() == pytest.approx(loss)
    expected = torch.tensor([[token_grads[0], 0, 0, 0], [token_grads[1]] * 3 + [0]])
    torch.testing.assert_close(logp.grad, expected)


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
def test_padding_never_matters(loss_type):
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    logp, old, ref = (torch.randn(3, 5) for _ in range(3))
    adv = torch.tensor([1.0, -0.5, 0.3])
    # other values on padding only (finite: masking multiplies by 0, as in TRL, so inf/NaN there would
    # still poison the sum; completion_logprobs writes 0 on padding for that reason)
    garbage = torch.where(mask.bool(), 0.0, 5 * torch.randn(3, 5))

    def loss_and_grad(shift):
        x = (logp + shift).requires_grad_()
        loss, stats = grpo.grpo_loss(x, old - shift, ref + shift, adv, mask, loss_type=loss_type,
                                     max_completion_length=5)
        loss.backward()
        return loss, x.grad * mask, stats

    clean, dirty = loss_and_grad(torch.zeros(3, 5)), loss_and_grad(garbage)
    torch.testing.assert_close(clean[0], dirty[0])
    torch.testing.assert_close(clean[1], dirty[1])
    assert clean[2] == dirty[2]


def test_grpo_loss_rejects_bad_input():
    x, m = torch.zeros(1, 2), torch.ones(1, 2)
    with pytest.raises(ValueError, match="grpo, bnpo, dr_grpo, dapo"):
        grpo.grpo_loss(x, None, x, torch.zeros(1), m, loss_type="ppo")
    with pytest.raises(ValueError, match="ref_logp is required"):
        grpo.grpo_loss(x, None, None, torch.zeros(1), m, beta=0.04)
    with pytest.raises(ValueError, match="mask shape"):
        grpo.grpo_loss(x, None, x, torch.zeros(1), torch.ones(1, 3))


# ---------------------------------------------------------------- selective_log_softmax


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_selective_log_softmax_equals_naive(temperature):
    torch.manual_seed(0)
    full = torch.randn(2, 10, 37) * 3
    logits = full[:, :-1]  # non-contiguous, like completion_logprobs' slice
    ids = torch.randint(0, 37, (2, 9))
    naive = (logits / temperature).log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    got = grpo.selective_log_softmax(logits, ids, chunk_size=4, temperature=temperature)  # 4 ∤ 9
    torch.testing.assert_close(got, naive, rtol=1e-5, atol=1e-5)
    # flat [N, V] and bf16 inputs (upcast chunk by chunk)
    torch.testing.assert_close(grpo.selective_log_softmax(logits.reshape(-1, 37), ids.reshape(-1)), naive.reshape(-1)
                               if temperature == 1.0 else logits.reshape(-1, 37).log_softmax(-1)
                               .gather(-1, ids.reshape(-1, 1)).squeeze(-1), rtol=1e-5, atol=1e-5)
    b = logits.bfloat16()
    assert grpo.selective_log_softmax(b, ids).dtype == torch.float32
    torch.testing.assert_close(grpo.selective_log_softmax(b, ids), b.float().log_softmax(-1).gather(
        -1, ids.unsqueeze(-1)).squeeze(-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_selective_log_softmax_gradient(temperature):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 7, (2, 5))
    assert torch.autograd.gradcheck(
        lambda x: grpo.selective_log_softmax(x, ids, chunk_size=2, temperature=temperature), (logits,)
    )


def test_selective_log_softmax_rejects_bad_input():
    with pytest.raises(ValueError, match="token_ids shape"):
        grpo.selective_log_softmax(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        grpo.selective_log_softmax(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), chunk_size=0)


# ---------------------------------------------------------------- batches and models (tiny random Qwen2)


@pytest.fixture(scope="module")
def tokenizer():
    from openrs_nb.models import load_tokenizer

    return load_tokenizer("demo")


@pytest.fixture(scope="module")
def tiny_path(tokenizer, tmp_path_factory):
    return grpo.save_tiny_policy(tokenizer, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def batch(tokenizer):
    q1 = [{"role": "user", "content": "What is 7 + 5?"}]
    q2 = [{"role": "user", "content": "What is 3 \\times 4?"}]
    completions = ["\\boxed{12}", "Let me add: 7 + 5 = 13, so \\boxed{13}", "It is 12, \\boxed{12}", "\\boxed{7}"]
    return grpo.completion_batch(tokenizer, [q1, q1, q2, q2], completions)


def test_completion_batch_layout(tokenizer, batch):
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    p_ids, p_mask, c_ids, c_mask = (batch[k] for k in
                                    ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"))
    assert p_ids.shape == p_mask.shape and c_ids.shape == c_mask.shape
    # prompts: left padding; q2's template renders longer than q1's
    assert (p_mask[:, -1] == 1).all() and (p_ids[p_mask == 0] == pad).all()
    assert tokenizer.decode(p_ids[0][p_mask[0].bool()]).endswith("<|im_start|>assistant\n")
    # completions: right padding, each ends with eos, and the mask covers exactly text + eos
    lengths = c_mask.sum(1)
    texts = ["\\boxed{12}", "Let me add: 7 + 5 = 13, so \\boxed{13}", "It is 12, \\boxed{12}", "\\boxed{7}"]
    for i, text in enumerate(texts):
        assert lengths[i] == len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
        assert c_ids[i, lengths[i] - 1] == eos
        assert (c_mask[i, : lengths[i]] == 1).all() and (c_mask[i, lengths[i]:] == 0).all()
    assert c_mask.shape[1] == lengths.max()


@pytest.mark.slow
def test_completion_logprobs_equals_full_forward(tiny_path, batch):
    from openrs_nb.models import load_policy

    model = load_policy(tiny_path)
    got = grpo.completion_logprobs(model, batch, temperature=0.7, chunk_size=3)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits  # all positions, no logits_to_keep
    p = batch["prompt_ids"].size(1)
    c_ids = batch["completion_ids"]
    naive = (logits[:, p - 1 : -1] / 0.7).log_softmax(-1).gather(-1, c_ids.unsqueeze(-1)).squeeze(-1)
    naive = naive * batch["completion_mask"]
    torch.testing.assert_close(got.detach(), naive, rtol=1e-5, atol=1e-5)
    assert (got[batch["completion_mask"] == 0] == 0).all()


# ---------------------------------------------------------------- equality with TRL 1.16's GRPOTrainer


def _off_policy_logps(trainer, batch, temperature, seed=0):
    """π_old and π_ref as perturbed copies of π_θ, so ratios leave [1−ε, 1+ε] and the KL is not zero."""
    with torch.no_grad():
        logp = grpo.completion_logprobs(trainer.model, batch, temperature=temperature)
    g = torch.Generator().manual_seed(seed)
    mask = batch["completion_mask"]
    old = (logp + 0.3 * torch.randn(logp.shape, generator=g)) * mask
    ref = (logp + 0.3 * torch.randn(logp.shape, generator=g)) * mask
    return old, ref


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
def test_equals_trl(loss_type, tiny_path, tokenizer, batch, tmp_path):
    temperature = 0.7
    trainer = grpo.trl_trainer(tiny_path, tokenizer, loss_type=loss_type, temperature=temperature,
                               max_completion_length=24, output_dir=tmp_path)
    adv = grpo.group_advantages([1.0, 0.0, 1.0, 0.5], num_generations=2)
    old, ref = _off_policy_logps(trainer, batch, temperature)
    # dapo normalises by the accumulated batch's token count: pretend it holds 3× this micro-batch
    n_items = 3 * int(batch["completion_mask"].sum()) if loss_type == "dapo" else None
    r = grpo.compare_with_trl(trainer, batch, adv, old, ref, num_items_in_batch=n_items)
    assert r["loss_rel_err"] <= 1e-5 and r["grad_rel_err"] <= 1e-5
    assert 0 < r["stats"]["clip_ratio/region_mean"] < 1  # the perturbation really exercises clipping
    for key, value in r["stats"].items():
        assert value == pytest.approx(r["metrics_trl"][key], rel=1e-5, abs=1e-7), key
    # a wrong temperature (TRL divides the logits by 0.7) breaks the equality
    assert grpo.compare_with_trl(trainer, batch, adv, old, ref, num_items_in_batch=n_items,
                                 temperature=1.0)["grad_rel_err"] > 1e-2


@pytest.mark.slow
def test_on_policy_and_bias_corrected_kl_equal_trl(tiny_path, tokenizer, batch, tmp_path):
    adv = grpo.group_advantages([1.0, 0.0, 0.0, 1.0], num_generations=2)
    plain = grpo.trl_trainer(tiny_path, tokenizer, loss_type="bnpo", temperature=1.0, output_dir=tmp_path)
    _, ref = _off_policy_logps(plain, batch, 1.0)
    # on-policy: no old_per_token_logps, both sides use π_θ detached (ratio exactly 1, clipping inactive)
    r = grpo.compare_with_trl(plain, batch, adv, None, ref)
    assert r["loss_rel_err"] <= 1e-5 and r["grad_rel_err"] <= 1e-5
    assert r["stats"]["clip_ratio/region_mean"] == 0.0

    # TRL 1.16's default use_bias_correction_kl=True: same loss value on-policy, a different gradient
    corrected = grpo.trl_trainer(tiny_path, tokenizer, loss_type="bnpo", temperature=1.0, output_dir=tmp_path,
                                 use_bias_correction_kl=True)
    c = grpo.compare_with_trl(corrected, batch, adv, None, ref, use_bias_correction_kl=True)
    assert c["loss_rel_err"] <= 1e-5 and c["grad_rel_err"] <= 1e-5
    assert c["loss_trl"] == pytest.approx(r["loss_trl"], rel=1e-5)
    assert ((c["grad_trl"] - r["grad_trl"]).norm() / r["grad_trl"].norm()).item() > 1e-3


@pytest.mark.slow
def test_low_memory_comparison(tiny_path, tokenizer, batch, tmp_path):
    """keep_grads=False measures the same gradient error without copies; the unused reference is released."""
    import trl.trainer.utils as trl_utils

    from openrs_nb.cpu import TRL_CPU_TILE

    trainer = grpo.trl_trainer(tiny_path, tokenizer, loss_type="bnpo", temperature=0.7, output_dir=tmp_path)
    assert trainer.ref_model is None and trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE <= TRL_CPU_TILE
    kept = grpo.trl_trainer(tiny_path, tokenizer, output_dir=tmp_path, keep_reference=True)
    assert kept.ref_model is not None
    # the released reference is really freed (accelerate held it in its list of prepared models)
    import gc

    from transformers import PreTrainedModel

    del kept
    gc.collect()
    causal_lms = [m for m in gc.get_objects() if isinstance(m, PreTrainedModel) and hasattr(m, "lm_head")]
    assert causal_lms == [trainer.model]
    adv = grpo.group_advantages([1.0, 0.0, 1.0, 0.5], num_generations=2)
    old, ref = _off_policy_logps(trainer, batch, 0.7)
    full = grpo.compare_with_trl(trainer, batch, adv, old, ref)
    lean = grpo.compare_with_trl(trainer, batch, adv, old, ref, keep_grads=False)
    assert lean["grad"] is None and lean["grad_trl"] is None
    assert lean["loss"] == full["loss"] and lean["loss_trl"] == full["loss_trl"]
    assert lean["grad_rel_err"] <= 1e-5 and lean["grad_rel_err"] == pytest.approx(full["grad_rel_err"], abs=1e-7)
    # a real mismatch shows up the same way in both
    wrong = [grpo.compare_with_trl(trainer, batch, adv, old, ref, temperature=1.0, keep_grads=k)["grad_rel_err"]
             for k in (True, False)]
    assert wrong[0] > 1e-2 and wrong[1] == pytest.approx(wrong[0], rel=1e-4)
    assert all(p.grad is None for p in trainer.model.parameters())
