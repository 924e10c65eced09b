"""How fast the demo model samples on this CPU: weights dtype × attention kernel × batch size.

Sampling is the largest piece of a CPU GRPO step (bench_demo_step.py) and all of an evaluation. This
times `model.generate` on the demo model (SmolLM2-135M-Instruct) as the trainer and the evaluation call it:
chat prompts of ~50 tokens (left-padded), `--new-tokens` sampled tokens each at temperature 1 (every row
runs to the end: min_new_tokens = max_new_tokens, so all variants decode the same number of tokens).
Each variant: one warm-up call, then the median of `--repeats` calls; one process, variants in turn.

    .venv/bin/python benchmarks/bench_generation.py
    .venv/bin/python benchmarks/bench_generation.py --variants float32/sdpa/16,bfloat16/eager/32 --threads 1

Measured on the project's 2-core CPU (AMD EPYC, avx512_bf16), 2 threads, quiet machine, 56 new tokens,
2026-11-29 13:20 (/tmp copy of this script):
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
rows of the 49,152-entry vocabulary (13-18% of the time) in every variant.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time


def time_generate(model, enc, pad_token_id: int, new_tokens: int) -> float:
    """Seconds for one sampled `generate` call of exactly `new_tokens` tokens per row."""
    import torch

    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.inference_mode():
        model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                       temperature=1.0, top_p=1.0, top_k=0, pad_token_id=pad_token_id)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="float32/sdpa/16,float32/eager/16,bfloat16/sdpa/16,bfloat16/eager/16,"
                                          "bfloat16/eager/32,bfloat16/eager/64",
                    help="comma-separated dtype/attention/batch")
    ap.add_argument("--new-tokens", type=int, default=56)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from openrs_nb.models import demo_model_path, load_tokenizer

    variants = []
    for v in args.variants.split(","):
        dtype, attn, batch = v.split("/")
        if dtype not in ("float32", "bfloat16") or attn not in ("sdpa", "eager") or not batch.isdigit():
            raise SystemExit(f"variant {v!r}: expected float32|bfloat16 / sdpa|eager / batch size")
        variants.append((dtype, attn, int(batch)))
    if args.threads:
        torch.set_num_threads(args.threads)
    path = str(demo_model_path())
    tok = load_tokenizer(path)
    print(f"demo model, {torch.get_num_threads()} threads, {args.new_tokens} new tokens, median of {args.repeats}")
    print(f"{'variant':<24}{'median s':>10}{'s per completion':>18}")
    for dtype, attn, batch in variants:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), attn_implementation=attn).eval()
        chats = [[{"role": "user", "content": f"What is {17 + i} + {29 * i}? Put the answer in \\boxed{{}}."}]
                 for i in range(batch)]
        texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)

        once = functools.partial(time_generate, model, enc, tok.pad_token_id, args.new_tokens)
        once()
        med = statistics.median(once() for _ in range(args.repeats))
        print(f"{dtype + ' / ' + attn + ' / ' + str(batch):<24}{med:>10.2f}{med / batch:>18.3f}", flush=True)


if __name__ == "__main__":
    main()
