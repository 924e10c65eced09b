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
            out = model.generate(**enc, **gen_kwargs)
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
