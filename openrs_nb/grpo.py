"""The GRPO loss of the paper (Eq. 1–3) in plain PyTorch, term for term what TRL 1.16's GRPOTrainer optimises.

- `group_advantages`      Eq. 3: reward minus its group mean, over the group std.
- `kl_k3`                 Eq. 2: the k3 estimator of KL(π_θ ‖ π_ref), one value per token.
- `grpo_loss`             Eq. 1 per token: clipped surrogate + β·KL, normalised as `loss_type` says.
- `selective_log_softmax` log π(token) for the chosen tokens, in chunks (no full [B, T, V] log-softmax).
- `completion_logprobs`   a model's per-token log-probabilities of a batch of completions.
- `completion_batch`      (prompt, completion) texts -> TRL's tensor layout.
- `trl_trainer`, `trl_loss`, `compare_with_trl`  TRL's own loss on our tensors, for the equality checks
  (`save_tiny_policy` makes a random 2-layer model that keeps them fast).

Like TRL (and the authors' code), the ratio π_θ/π_old and its clipping act on each token, not on the
whole sequence as Eq. 1 is printed; 03_grpo_loss.ipynb explains the difference and checks every
function against TRL. Settings that make TRL 1.16 compute exactly this loss (`TRL_ALIGNMENT`):
`use_bias_correction_kl=False`, `vllm_importance_sampling_correction=False` (only read with vLLM),
the same `temperature` for the log-probs as TRL's (it divides the logits by the sampling temperature),
and the defaults `importance_sampling_level="token"`, `epsilon_high=None`, `delta=None`,
`top_entropy_quantile=1.0`, `entropy_coef=0.0`, `off_policy_mask_threshold=None`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .config import LOSS_TYPES

# GRPOConfig values under which TRL 1.16's `_compute_loss` equals `grpo_loss` (besides loss_type/beta/epsilon).
TRL_ALIGNMENT: dict[str, Any] = {
    "use_bias_correction_kl": False,  # TRL default True: multiplies the KL term by the (differentiable) ratio
    "vllm_importance_sampling_correction": False,  # TRL default True: reweights tokens by π_train/π_vLLM
    "importance_sampling_level": "token",  # "sequence" = GSPO's per-sequence ratio
    "epsilon_high": None,  # None = symmetric clipping [1-ε, 1+ε]; DAPO's clip-higher sets it larger
    "delta": None,  # INTELLECT-2's upper bound on the unclipped ratio
    "top_entropy_quantile": 1.0,  # 1.0 keeps every token in the loss
    "entropy_coef": 0.0,  # no entropy bonus
    "off_policy_mask_threshold": None,  # no DeepSeek-V3.2 off-policy sequence masking
    "mask_truncated_completions": False,  # truncated completions stay in the loss
}


def group_advantages(rewards, num_generations: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Eq. 3: A_i = (r_i − mean(group)) / (std(group) + eps), groups = `num_generations` consecutive rewards.

    std is the sample std (Bessel-corrected), as in TRL. A group whose rewards are all equal gets A = 0
    everywhere: it carries no learning signal. `scale=False` skips the division (Dr. GRPO; TRL's
    `scale_rewards="none"`).
    """
    r = torch.as_tensor(rewards, dtype=torch.float32)
    if r.dim() != 1:
        raise ValueError(f"rewards must be one-dimensional (one reward per completion), got shape {tuple(r.shape)}")
    if num_generations < 2:
        raise ValueError(f"num_generations={num_generations} is not valid: a group needs at least 2 completions")
    if r.numel() == 0 or r.numel() % num_generations:
        raise ValueError(
            f"{r.numel()} rewards cannot be split into groups of num_generations={num_generations}: "
            "give G consecutive completions per prompt"
        )
    if not torch.isfinite(r).all():
        raise ValueError("rewards contain NaN or inf; score every completion with a finite reward")
    if eps < 0:
        raise ValueError(f"eps={eps} must be >= 0")
    grouped = r.view(-1, num_generations)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)
    return advantages.view(-1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Eq. 2 per token: π_ref/π_θ − log(π_ref/π_θ) − 1 ≥ 0, an unbiased estimate of KL(π_θ‖π_ref) under π_θ.

    As a loss term its gradient, (1 − π_ref/π_θ)·∇log π_θ, has expectation ∇KL(π_ref‖π_θ) under π_θ: the
    forward KL's gradient, equal to the reverse KL's only to first order near π_ref (03_grpo_loss checks it).
    """
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float = 0.2,
    beta: float = 0.04,
    loss_type: str = "bnpo",
    *,
    max_completion_length: int | None = None,
    num_items_in_batch: float | None = None,
    use_bias_correction_kl: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 1 per token, negated to a loss; returns (loss, the statistics TRL logs).

    logp, old_logp, ref_logp, mask: [B, T] per-token log-probabilities of the completion tokens under
    π_θ (with grad), π_old and π_ref, and 1 for real tokens / 0 for padding. `old_logp=None` means
    on-policy (π_old = π_θ, detached), as TRL does when it skips recomputing them; `ref_logp` may be
    None only when beta == 0. advantages: [B] (or [B, T]).

    Per token: ℓ = −min(ρA, clip(ρ, 1−ε, 1+ε)A) + β·k3, ρ = exp(logp − old_logp). Reduction:
      grpo     mean over each sequence's tokens, then over sequences
      bnpo     Σ ℓ·mask / Σ mask over the micro-batch: the authors' loss (their pinned TRL,
               huggingface/trl @69ad852e5 `trl/trainer/grpo_trainer.py`, `compute_loss`)
      dr_grpo  Σ ℓ·mask / (B × max_completion_length)  (default: T, the padded length)
      dapo     Σ ℓ·mask / num_items_in_batch, the token count of the whole accumulated batch
               (default: this micro-batch's, which makes it equal to bnpo)
    TRL additionally divides grpo/bnpo/dr_grpo by the gradient-accumulation steps during training.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is not valid; choose one of {', '.join(LOSS_TYPES)}")
    if epsilon < 0 or beta < 0:
        raise ValueError(f"epsilon={epsilon} and beta={beta} must both be >= 0")
    if beta != 0 and ref_logp is None:
        raise ValueError("ref_logp is required when beta != 0 (the KL term needs the reference policy)")
    if mask.shape != logp.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from logp shape {tuple(logp.shape)}")
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} differs from logp shape {tuple(logp.shape)}")

    mask = mask.to(logp.dtype)
    advantages = advantages.to(logp.dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    if old_logp is None:
        old_logp = logp.detach()

    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    kl = None
    if beta != 0:
        kl = kl_k3(logp, ref_logp)
        if use_bias_correction_kl:  # TRL 1.16's default; the authors' TRL did not do this
            kl = kl * ratio
        per_token = per_token + beta * kl

    masked_sum = (per_token * mask).sum()
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = masked_sum / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        length = logp.size(1) if max_completion_length is None else max_completion_length
        loss = masked_sum / (logp.size(0) * length)
    else:  # dapo
        n = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, dtype=logp.dtype)
        loss = masked_sum / n.clamp(min=1.0)

    with torch.no_grad():
        stats = _loss_stats(ratio, advantages, mask, kl, epsilon)
    return loss, stats


def _loss_stats(ratio, advantages, mask, kl, epsilon) -> dict[str, float]:
    """TRL's logged statistics: token-weighted clip fractions and mean KL, per-sequence clip extremes."""
    n_tokens = mask.sum().clamp(min=1.0)

    def token_mean(x):
        return ((x * mask).sum() / n_tokens).item()

    def seq_means(x):
        return (x * mask).sum(-1) / mask.sum(-1)  # NaN for an empty sequence, as in TRL

    low = ((ratio < 1 - epsilon) & (advantages < 0)).to(mask.dtype)
    high = ((ratio > 1 + epsilon) & (advantages > 0)).to(mask.dtype)
    stats = {
        "clip_ratio/low_mean": token_mean(low),
        "clip_ratio/high_mean": token_mean(high),
        "clip_ratio/region_mean": token_mean(torch.maximum(low, high)),
        "clip_ratio/low_min": _nan_reduce(seq_means(low), torch.min),
        "clip_ratio/high_max": _nan_reduce(seq_means(high), torch.max),
    }
    if kl is not None:
        stats["kl"] = token_mean(kl)
    return stats


def _nan_reduce(x: torch.Tensor, fn) -> float:
    x = x[~torch.isnan(x)]
    return fn(x).item() if x.numel() else float("nan")


class _ChunkedSelectiveLogSoftmax(torch.autograd.Function):
    """log_softmax(x / T)[target] over rows of [R, L, V] logits, `chunk` positions at a time.

    Forward keeps only one chunk of probabilities alive; backward recomputes them per chunk instead of
    saving a full [R, L, V] softmax, so the only full-size tensor is the gradient of the logits itself.
    """

    @staticmethod
    def forward(ctx, logits, ids, chunk, temperature):
        rows, length, _ = logits.shape
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32  # never sum in bf16/fp16
        out = torch.empty(rows, length, dtype=dtype, device=logits.device)
        lse = torch.empty_like(out)
        for r in range(rows):
            for s in range(0, length, chunk):
                x = logits[r, s : s + chunk].to(dtype)  # a view when logits already have that dtype
                if temperature != 1.0:
                    x = x / temperature
                lse[r, s : s + chunk] = torch.logsumexp(x, dim=-1)
                picked = x.gather(-1, ids[r, s : s + chunk].unsqueeze(-1)).squeeze(-1)
                out[r, s : s + chunk] = picked - lse[r, s : s + chunk]
        ctx.save_for_backward(logits, ids, lse)
        ctx.chunk, ctx.temperature = chunk, temperature
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        logits, ids, lse = ctx.saved_tensors
        chunk, t = ctx.chunk, ctx.temperature
        grad = torch.empty_like(logits)
        rows, length, _ = logits.shape
        for r in range(rows):
            for s in range(0, length, chunk):
                g = grad_out[r, s : s + chunk].to(lse.dtype).unsqueeze(-1) / t  # [c, 1]
                # d/dx [x_k/T − logsumexp(x/T)] = (onehot_k − softmax(x/T)) / T
                p = torch.exp(logits[r, s : s + chunk].to(lse.dtype) / t - lse[r, s : s + chunk].unsqueeze(-1))
                p.mul_(-g).scatter_add_(-1, ids[r, s : s + chunk].unsqueeze(-1), g)
                grad[r, s : s + chunk] = p
        return grad, None, None, None


def selective_log_softmax(
    logits: torch.Tensor, token_ids: torch.Tensor, chunk_size: int = 128, temperature: float = 1.0
) -> torch.Tensor:
    """log_softmax(logits / temperature).gather(token_ids), computed `chunk_size` positions at a time.

    logits [..., V], token_ids [...] -> fp32 log-probabilities [...] (fp64 for fp64 logits). Equal to
    the naive `(logits / T).log_softmax(-1).gather(-1, ids[..., None])[..., 0]`, but the extra memory is one
    chunk of [chunk_size, V] floats instead of a second full [..., V] tensor (and backward never
    stores a full softmax). bf16/fp16 logits are upcast chunk by chunk, so the sums run in fp32.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    if logits.dim() < 2:
        raise ValueError("logits need at least two dimensions: [..., vocab]")
    if token_ids.shape != logits.shape[:-1]:
        raise ValueError(
            f"token_ids shape {tuple(token_ids.shape)} must equal logits shape without the vocab axis "
            f"{tuple(logits.shape[:-1])}"
        )
    lead = token_ids.shape
    # [..., L, V] -> [R, L, V] without copying the common [B, T, V] case (even a sliced, non-contiguous one)
    logits3 = logits.unsqueeze(0) if logits.dim() == 2 else logits.flatten(0, -3) if logits.dim() > 3 else logits
    ids3 = token_ids.reshape(logits3.shape[:-1]).long()
    return _ChunkedSelectiveLogSoftmax.apply(logits3, ids3, chunk_size, float(temperature)).reshape(lead)


def completion_logprobs(
    model, batch: dict[str, torch.Tensor], temperature: float = 1.0, chunk_size: int = 128
) -> torch.Tensor:
    """Per-token log π(completion token | prompt, previous tokens) of `batch`, [B, T], 0 at padding.

    `batch` holds prompt_ids/prompt_mask (left-padded) and completion_ids/completion_mask (right-padded),
    TRL's layout. The logits are divided by `temperature` like TRL 1.16 does (its log-probs are those of
    the sampling distribution); pass the GRPOConfig temperature to match it.
    """
    prompt_ids, completion_ids = batch["prompt_ids"], batch["completion_ids"]
    completion_mask = batch["completion_mask"]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], completion_mask], dim=1)
    n = completion_ids.size(1)
    # the logit at position t predicts token t + 1: keep the n + 1 last positions and drop the final one
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=n + 1).logits[:, :-1]
    logps = selective_log_softmax(logits, completion_ids, chunk_size=chunk_size, temperature=temperature)
    return logps.masked_fill(completion_mask == 0, 0.0)


def completion_batch(
    tokenizer, prompts: Sequence[str | list[dict[str, str]]], completions: Sequence[str], add_eos: bool = True
) -> dict[str, torch.Tensor]:
    """Tokenise (prompt, completion) pairs into TRL's layout: prompts left-padded, completions right-padded.

    Chat-message prompts go through the chat template with the generation prompt, as TRL does. With
    `add_eos`, each completion ends with the tokenizer's eos token, like a finished sampled completion.
    """
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"need one prompt per completion, got {len(prompts)} prompts and "
                         f"{len(completions)} completions")
    texts = [
        p if isinstance(p, str) else tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    prompt_tok = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    completion_tok = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    if add_eos:
        completion_tok = [ids + [tokenizer.eos_token_id] for ids in completion_tok]
    if any(len(ids) == 0 for ids in completion_tok):
        raise ValueError("every completion needs at least one token")
    pad = tokenizer.pad_token_id
    p_len, c_len = max(map(len, prompt_tok)), max(map(len, completion_tok))
    prompt_ids = torch.tensor([[pad] * (p_len - len(x)) + x for x in prompt_tok])
    prompt_mask = torch.tensor([[0] * (p_len - len(x)) + [1] * len(x) for x in prompt_tok])
    completion_ids = torch.tensor([x + [pad] * (c_len - len(x)) for x in completion_tok])
    completion_mask = torch.tensor([[1] * len(x) + [0] * (c_len - len(x)) for x in completion_tok])
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
    }


def save_tiny_policy(tokenizer, save_dir, seed: int = 0, hidden_size: int = 64, num_layers: int = 2) -> str:
    """Save a random-init 2-layer Qwen2 with the tokenizer's vocabulary to `save_dir`; return the path.

    For checking the loss in seconds (load it with `models.load_policy(path)` or hand the path to
    `trl_trainer`): its outputs mean nothing, its gradients are real.
    """
    from pathlib import Path

    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    return str(Path(save_dir))


def trl_trainer(
    model,
    tokenizer,
    *,
    loss_type: str = "bnpo",
    beta: float = 0.04,
    epsilon: float = 0.2,
    temperature: float = 0.7,
    num_generations: int = 2,
    max_completion_length: int = 64,
    output_dir: str = "runs/trl_reference",
    keep_reference: bool = False,
    **overrides,
):
    """A real TRL 1.16 GRPOTrainer, built only to evaluate its loss on batches we construct.

    `model` is a path or a loaded model whose config names a path (TRL loads the reference model from
    it when beta > 0; a loaded model is used as the policy itself, not copied). The config is the
    project's port (`TRL_ALIGNMENT`) on CPU, one process, no gradient accumulation; `overrides` go to
    GRPOConfig (e.g. `use_bias_correction_kl=True`).

    Memory: TRL's CPU log-prob tiles are narrowed (`openrs_nb.cpu.narrow_trl_logprob_tiles`: same
    log-probs, a fraction of the temporaries), and unless `keep_reference`, TRL's reference model is
    released once built: its `compute_loss` reads `ref_per_token_logps` from the inputs (`trl_loss`
    passes them), and only its own generate-and-score step, which these trainers never run, uses it.
    """
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from openrs_nb.cpu import narrow_trl_logprob_tiles, release_memory

    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is not valid; choose one of {', '.join(LOSS_TYPES)}")
    settings = {
        **TRL_ALIGNMENT,
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "save_strategy": "no",
        "disable_dropout": True,
        "loss_type": loss_type,
        "beta": beta,
        "epsilon": epsilon,
        "temperature": temperature,
        "num_generations": num_generations,
        "per_device_train_batch_size": num_generations,
        "gradient_accumulation_steps": 1,
        "max_completion_length": max_completion_length,
        **overrides,
    }

    def zero_reward(completions, **kwargs):  # never called: we hand the trainer our own advantages
        return [0.0] * len(completions)

    narrow_trl_logprob_tiles()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=zero_reward,
        args=GRPOConfig(**settings),
        train_dataset=Dataset.from_dict({"prompt": ["unused"] * num_generations}),
        processing_class=tokenizer,
    )
    if not keep_reference and trainer.ref_model is not None:
        ref, trainer.ref_model = trainer.ref_model, None
        # accelerate keeps every prepared model in its list: drop it there too, or it stays alive
        trainer.accelerator._models[:] = [m for m in trainer.accelerator._models if m is not ref]
        del ref
        release_memory()
    return trainer


def trl_loss(
    trainer,
    batch: dict[str, torch.Tensor],
    advantages: torch.Tensor,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    num_items_in_batch: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """TRL's own `compute_loss` on `batch` (our tensors, TRL's code); returns (loss, the metrics it logged).

    Sets the two pieces of state its training loop would (train mode, one accumulation step) and reads
    the metrics back from `trainer._metrics`, a private attribute of TRL 1.16.
    """
    inputs = {
        **batch,
        "advantages": advantages,
        "num_items_in_batch": torch.as_tensor(
            batch["completion_mask"].sum() if num_items_in_batch is None else num_items_in_batch, dtype=torch.float32
        ),
    }
    if old_logp is not None:
        inputs["old_per_token_logps"] = old_logp
    if ref_logp is not None:
        inputs["ref_per_token_logps"] = ref_logp
    was_training = trainer.model.training
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    trainer._metrics["train"].clear()
    try:
        loss = trainer.compute_loss(trainer.model, inputs)
    finally:
        trainer.model.train(was_training)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss, metrics


def _grad_norm(params) -> float:
    """‖grad‖ over all parameters from per-tensor norms, without copying a gradient (`p.grad.double() ** 2`
    made two 226 MB temporaries for SmolLM2's embedding)."""
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).item()


def compare_with_trl(
    trainer,
    batch: dict[str, torch.Tensor],
    advantages: torch.Tensor,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    *,
    num_items_in_batch: float | None = None,
    temperature: float | None = None,
    use_bias_correction_kl: bool = False,
    keep_grads: bool = True,
) -> dict[str, Any]:
    """TRL's loss and gradients against `grpo_loss`'s, on the trainer's model and the same tensors.

    Runs `trl_loss` + backward, then `completion_logprobs` + `grpo_loss` + backward with the trainer's
    loss_type, beta, epsilon and max_completion_length. `temperature` defaults to the trainer's (pass
    another to see what a mismatch does). Relative errors: |Δloss| / |loss_trl| and ‖Δgrad‖ / ‖grad_trl‖
    over all parameters.

    `keep_grads=False` (a large model in little memory): no flattened copies of the two gradients
    ("grad_trl" and "grad" are None); the second backward runs on -loss into the gradients the first
    left, so they hold grad_trl - grad (one fp32 rounding per element) and ‖Δgrad‖ is read from them.
    """
    model = trainer.model
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    loss_trl, metrics = trl_loss(trainer, batch, advantages, old_logp, ref_logp, num_items_in_batch)
    loss_trl.backward()
    if keep_grads:
        grad_trl = torch.cat([p.grad.flatten() for p in params if p.grad is not None])  # cat copies
        model.zero_grad()
    else:
        grad_trl = None
        grad_trl_norm = _grad_norm(params)
    logp = completion_logprobs(model, batch, temperature=trainer.temperature if temperature is None else temperature)
    loss, stats = grpo_loss(
        logp, old_logp, ref_logp, advantages, batch["completion_mask"],
        epsilon=trainer.epsilon_low, beta=trainer.beta, loss_type=trainer.loss_type,
        max_completion_length=trainer.max_completion_length, num_items_in_batch=num_items_in_batch,
        use_bias_correction_kl=use_bias_correction_kl,
    )
    if keep_grads:
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
        grad_rel_err = ((grad - grad_trl).norm() / grad_trl.norm()).item()
    else:
        (-loss).backward()  # accumulates: p.grad = grad_trl - grad
        grad = None
        grad_rel_err = _grad_norm(params) / grad_trl_norm
    model.zero_grad()
    return {
        "loss_trl": loss_trl.item(),
        "loss": loss.item(),
        "loss_rel_err": abs(loss.item() - loss_trl.item()) / abs(loss_trl.item()),
        "grad_rel_err": grad_rel_err,
        "grad_trl": grad_trl,
        "grad": grad,
        "metrics_trl": metrics,
        "stats": stats,
    }
