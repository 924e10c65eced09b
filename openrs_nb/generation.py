"""The one place that samples completions: vLLM on GPUs, transformers `generate` on CPU.

Both backends return the same records, so curation filters and evaluation never care which ran:
for each prompt, `n` dicts `{"text": str, "num_tokens": int, "truncated": bool}`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

BACKENDS = ("auto", "transformers", "vllm")
# Callers that cache what they generate (evaluation, curation filters) call vLLM with about this many
# completions at a time: a crash loses at most one chunk, and a chunk still keeps a GPU busy (each call
# waits for its longest completion).
VLLM_CHUNK_COMPLETIONS = 256

Prompt = str | list[dict[str, str]]


def pick_backend(backend: str = "auto") -> str:
    """'auto' -> 'vllm' when CUDA and vllm are available, else 'transformers'."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not valid; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "transformers"


# Drawing the tokens, not computing their logits, took 40% of 05's CPU generate time (torch profiler; bf16
# demo model, 32 rows × 96 tokens, 2 threads): with do_sample=True transformers sorts the whole vocabulary
# for top-p (TopPLogitsWarper: aten::sort 23%) and draws with torch.multinomial, whose exponential_ noise
# over every entry took 17% (16 ms per token for 16 rows of 49,152). FastSampling draws from the same
# distribution with a top-k of candidates and one uniform number per row, inside a greedy generate.
FAST_SAMPLING_CANDIDATES = 256


class FastSampling:
    """A transformers logits processor that samples the next token as do_sample=True would, for a greedy generate.

    The distribution is do_sample's: scores / temperature, then top-k, then top-p with TopPLogitsWarper's rule
    (keep a token when the probability of the tokens ranked above it is < top_p, at least one token), then a
    draw from the renormalised rest. Top-p looks at the `candidates` most likely tokens and sorts the whole
    vocabulary only for rows whose nucleus is larger. The draw is by inverse CDF: one torch.rand per row,
    from torch's global generator, so torch.manual_seed makes it repeatable. Returns scores that are 0 at
    the drawn token and -inf elsewhere, so generate's argmax emits it.
    """

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 candidates: int = FAST_SAMPLING_CANDIDATES):
        if temperature <= 0 or not 0 < top_p <= 1 or top_k < 0 or candidates < 1:
            raise ValueError(f"need temperature > 0, 0 < top_p <= 1, top_k >= 0, candidates >= 1 "
                             f"(got {temperature}, {top_p}, {top_k}, {candidates})")
        self.temperature, self.top_k, self.top_p, self.candidates = temperature, top_k, top_p, candidates

    def probabilities(self, scores):
        """[B, V] probabilities do_sample would draw from: temperature, top-k, top-p, renormalised (float64)."""
        import torch

        scores = scores.double()
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))  # TopKLogitsWarper keeps ties
        probs = torch.softmax(scores, dim=-1)
        if self.top_p < 1.0:
            probs = self._nucleus(probs, min(self.candidates, probs.shape[-1]))
        return probs / probs.sum(dim=-1, keepdim=True)

    def _nucleus(self, probs, k):
        import torch

        top, idx = torch.topk(probs, k)
        keep = (top.cumsum(dim=-1) - top) < self.top_p  # the mass ranked above each candidate
        keep[:, 0] = True
        out = torch.zeros_like(probs).scatter_(1, idx, top * keep)
        wide = keep[:, -1]  # every candidate kept: the nucleus may reach beyond them
        if k < probs.shape[-1] and wide.any():
            out[wide] = self._nucleus(probs[wide], probs.shape[-1])
        return out

    def __call__(self, input_ids, scores):
        import torch

        cdf = self.probabilities(scores).cumsum(dim=-1)
        u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
        token = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)


def fast_sampling(config) -> FastSampling | None:
    """The FastSampling that draws as `config` (a resolved GenerationConfig) samples, or None where `config`
    is not plain sampling (greedy, beams) or uses a warper FastSampling does not have (min_p, typical_p, ...)."""
    c = config
    unsupported = (c.min_p is not None, (c.typical_p or 1.0) < 1.0, 0 < (c.epsilon_cutoff or 0) < 1,
                   0 < (c.eta_cutoff or 0) < 1, getattr(c, "top_h", None) is not None,
                   c.watermarking_config is not None, (c.num_beams or 1) > 1, c.do_sample is not True)
    if any(unsupported):
        return None
    return FastSampling(c.temperature or 1.0, c.top_k or 0, 1.0 if c.top_p is None else c.top_p)


def fast_generate(model, inputs=None, generation_config=None, logits_processor=None, **kwargs):
    """`model.generate(...)` (same arguments) with do_sample's draw done by FastSampling (the same
    distribution, see there) where the generation config is plain sampling; anything else goes to
    model.generate unchanged."""
    import copy

    from transformers import LogitsProcessorList

    # What generate itself would use: call kwargs > generation_config > the model's > transformers' defaults
    resolved, _ = model._prepare_generation_config(generation_config, **kwargs)
    sampler = None if logits_processor else fast_sampling(resolved)
    if sampler is None:
        return type(model).generate(model, inputs, generation_config=generation_config,
                                    logits_processor=logits_processor, **kwargs)
    greedy = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    model_kwargs = greedy.update(**kwargs)  # generation settings go into the config; the rest are model inputs
    # transformers' neutral values: greedy decoding ignores them, and it warns about any other
    greedy.update(do_sample=False, temperature=1.0, top_k=50, top_p=1.0)
    return type(model).generate(model, inputs, generation_config=greedy,
                                logits_processor=LogitsProcessorList([sampler]), **model_kwargs)


def render_prompts(prompts: Sequence[Prompt], tokenizer) -> list[str]:
    """Chat-message prompts through the tokenizer's chat template; strings pass through unchanged."""
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, list):
            out.append(tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True))
        else:
            raise TypeError(f"a prompt must be a string or a list of chat messages, got {type(p).__name__}")
    return out


def generate(
    model: Any,
    prompts: Sequence[Prompt],
    *,
    tokenizer=None,
    n: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 0.6,
    top_p: float = 0.95,
    seed: int = 1234,
    backend: str = "auto",
    batch_size: int = 16,
    min_new_tokens: int = 0,
    progress: bool = True,
) -> list[list[dict]]:
    """Sample `n` completions for each prompt; returns one list of `n` records per prompt.

    `model` is a Hub id, a local path, 'demo', or (transformers backend only) a loaded model.
    `temperature=0` means greedy decoding (then all `n` samples are identical).
    """
    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"n, max_new_tokens and batch_size must be >= 1 (got {n}, {max_new_tokens}, {batch_size})")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")
    backend = pick_backend(backend)
    if not prompts:
        return []
    if backend == "vllm":
        return _generate_vllm(model, prompts, tokenizer, n, max_new_tokens, temperature, top_p, seed, min_new_tokens)
    return _generate_transformers(
        model, prompts, tokenizer, n, max_new_tokens, temperature, top_p, seed, batch_size, min_new_tokens, progress
    )


def _generate_transformers(model, prompts, tokenizer, n, max_new_tokens, temperature, top_p, seed, batch_size,
                           min_new_tokens, progress):
    import torch
    from tqdm.auto import tqdm

    from openrs_nb.models import load_policy, load_tokenizer

    if isinstance(model, str):
        tokenizer = tokenizer or load_tokenizer(model)
        model = load_policy(model)
    if tokenizer is None:
        raise ValueError("pass tokenizer= when giving a loaded model")
    tokenizer.padding_side = "left"
    texts = render_prompts(prompts, tokenizer)
    # Each prompt repeated n times, consecutive, so a batch holds whole groups where it can.
    flat = [t for t in texts for _ in range(n)]
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    sample = temperature > 0
    gen_kwargs = dict(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    records: list[dict] = []
    bar = tqdm(total=len(flat), desc="generate", unit="completion", disable=not progress)
    with torch.inference_mode():
        for start in range(0, len(flat), batch_size):
            chunk = flat[start : start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            out = fast_generate(model, **enc, **gen_kwargs)
            for row in out[:, enc["input_ids"].shape[1] :]:
                records.append(_record(row.tolist(), tokenizer, max_new_tokens))
            bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return [records[i * n : (i + 1) * n] for i in range(len(texts))]


def _record(token_ids: list[int], tokenizer, max_new_tokens: int) -> dict:
    """Cut at the first eos (generate pads finished rows), decode, and mark length truncation."""
    eos = tokenizer.eos_token_id
    if eos in token_ids:
        token_ids = token_ids[: token_ids.index(eos) + 1]
        truncated = False
    else:
        token_ids = [t for t in token_ids if t != tokenizer.pad_token_id]
        truncated = len(token_ids) >= max_new_tokens
    return {
        "text": tokenizer.decode(token_ids, skip_special_tokens=True),
        "num_tokens": len(token_ids),
        "truncated": truncated,
    }


_VLLM_ENGINES: dict[str, Any] = {}


def _vllm_engine(path: str, seed: int):
    """One vLLM engine per model and process, reused across calls (building one takes a minute).
    One GPU per engine; evaluate.py spreads work over GPUs with one process each."""
    from vllm import LLM

    if path not in _VLLM_ENGINES:
        _VLLM_ENGINES.clear()  # one model on the GPU at a time
        _VLLM_ENGINES[path] = LLM(model=path, seed=seed)
    return _VLLM_ENGINES[path]


def _generate_vllm(model, prompts, tokenizer, n, max_new_tokens, temperature, top_p, seed, min_new_tokens):
    from vllm import SamplingParams

    from openrs_nb.models import resolve_model_path

    if not isinstance(model, str):
        raise ValueError("the vllm backend takes a model name or path, not a loaded model")
    llm = _vllm_engine(resolve_model_path(model), seed)
    tokenizer = tokenizer or llm.get_tokenizer()
    texts = render_prompts(prompts, tokenizer)
    params = SamplingParams(
        n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, min_tokens=min_new_tokens, seed=seed
    )
    results = llm.generate(texts, params)
    return [
        [
            {"text": o.text, "num_tokens": len(o.token_ids), "truncated": o.finish_reason == "length"}
            for o in r.outputs
        ]
        for r in results
    ]
