"""How fast the demo model samples on this CPU: weights dtype × attention kernel × batch size × how a token is drawn.

Sampling is the largest piece of a CPU GRPO step (bench_demo_step.py) and all of an evaluation. This
times `generate` on the demo model (SmolLM2-135M-Instruct) as the trainer and the evaluation call it:
chat prompts of ~50 tokens (left-padded), `--new-tokens` sampled tokens each (every row runs to the end:
min_new_tokens = max_new_tokens, so all variants decode the same number of tokens), at `--temperature` and
`--top-p` (the trainer: 1 and 1; evaluation, 05: 0.6 and 0.95). The draw is transformers' own
(`multinomial`: top-p's full sort, then torch.multinomial) or openrs_nb.generation.FastSampling (`fast`,
what the project runs). Each variant: one warm-up call, then `--repeats` calls taken in turns with the other
variants (so a busy moment slows them alike); the median is printed.

    .venv/bin/python benchmarks/bench_generation.py
    .venv/bin/python benchmarks/bench_generation.py --variants float32/sdpa/16,bfloat16/eager/32 --threads 1
    .venv/bin/python benchmarks/bench_generation.py --variants bfloat16/eager/32/multinomial,bfloat16/eager/32/fast \
        --temperature 0.6 --top-p 0.95 --new-tokens 96

Measured on the project's 2-core CPU (AMD EPYC, avx512_bf16), 2 threads, quiet machine, 56 new tokens,
2026-11-29 13:20 (/tmp copy of this script; transformers' multinomial draw, temperature 1):
    variant               median s   s per completion
    float32 / sdpa / 16     9.35       0.585      (before: evaluation and fp32 sampling)
    float32 / eager / 16    8.55       0.535
    bfloat16 / sdpa / 16    6.2-7.9    —          (separate run: 6.17, 7.67, 7.88)
    bfloat16 / eager / 16   4.83       0.302      (now: the trainer's bf16 sampling copy)
    bfloat16 / eager / 32   7.94       0.248      (now: evaluation's default batch)
    bfloat16 / eager / 64  13.33       0.208
Why eager: in a decode step each layer attends one query to a short KV cache; torch's CPU flash kernel
(aten::_scaled_dot_product_flash_attention_for_cpu) took ~0.8 ms per call there, 21% of generate's time,
where eager's two bmm take ~0.08 ms. torch.multinomial's exponential_ noise costs ~15 ms per token for 16
rows of the 49,152-entry vocabulary (13-18% of the time) in every variant, and at top-p < 1 the full sort
another ~30 ms: what FastSampling removes. The two draws side by side (2 threads, quiet, 2026-11-29 20:15):
    --variants bfloat16/eager/16/multinomial,bfloat16/eager/16/fast --repeats 5       (the trainer's rollouts)
        multinomial 5.41 s, fast 4.73 s (0.87x)
    --variants bfloat16/eager/32/multinomial,bfloat16/eager/32/fast --temperature 0.6 --top-p 0.95
    --new-tokens 96                                                                    (05's evaluation)
        multinomial 19.04 s, fast 13.12 s (0.69x)
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time


def time_generate(model, enc, pad_token_id: int, new_tokens: int, temperature: float, top_p: float,
                  draw: str) -> float:
    """Seconds for one sampled `generate` call of exactly `new_tokens` tokens per row."""
    import torch

    from openrs_nb.generation import fast_generate

    generate = fast_generate if draw == "fast" else type(model).generate
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.inference_mode():
        generate(model, **enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                 temperature=temperature, top_p=top_p, top_k=0, pad_token_id=pad_token_id)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="bfloat16/eager/16/multinomial,bfloat16/eager/16/fast,"
                                          "bfloat16/eager/32/multinomial,bfloat16/eager/32/fast",
                    help="comma-separated dtype/attention/batch[/draw], draw multinomial or fast (default)")
    ap.add_argument("--new-tokens", type=int, default=56)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from openrs_nb.models import demo_model_path, load_tokenizer

    variants = []
    for v in args.variants.split(","):
        dtype, attn, batch, draw = (v.split("/") + ["fast"])[:4]
        if dtype not in ("float32", "bfloat16") or attn not in ("sdpa", "eager") or not batch.isdigit() \
                or draw not in ("multinomial", "fast"):
            raise SystemExit(f"variant {v!r}: expected float32|bfloat16 / sdpa|eager / batch size [/ multinomial|fast]")
        variants.append((dtype, attn, int(batch), draw))
    if args.threads:
        torch.set_num_threads(args.threads)
    path = str(demo_model_path())
    tok = load_tokenizer(path)
    models = {}
    runs = {}
    for dtype, attn, batch, draw in variants:
        if (dtype, attn) not in models:
            models[dtype, attn] = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                                                       attn_implementation=attn).eval()
        chats = [[{"role": "user", "content": f"What is {17 + i} + {29 * i}? Put the answer in \\boxed{{}}."}]
                 for i in range(batch)]
        texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        runs[dtype, attn, batch, draw] = functools.partial(time_generate, models[dtype, attn], enc, tok.pad_token_id,
                                                           args.new_tokens, args.temperature, args.top_p, draw)
    times = {v: [] for v in runs}
    for once in runs.values():
        once()  # warm-up
    for _ in range(args.repeats):
        for v, once in runs.items():
            times[v].append(once())
    print(f"demo model, {torch.get_num_threads()} threads, {args.new_tokens} new tokens, temperature "
          f"{args.temperature}, top-p {args.top_p}; median of {args.repeats}, variants in turn")
    print(f"{'variant':<36}{'median s':>10}{'s per completion':>18}   all s")
    for (dtype, attn, batch, draw), ts in times.items():
        med = statistics.median(ts)
        name = f"{dtype} / {attn} / {batch} / {draw}"
        print(f"{name:<36}{med:>10.2f}{med / batch:>18.3f}   {' '.join(f'{t:.2f}' for t in ts)}")


if __name__ == "__main__":
    main()
