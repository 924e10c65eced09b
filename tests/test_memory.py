"""The LoRA demo's memory savers do what they say, on a tiny random-weight model (seconds).

Under cfg.lora format priming trains LoRA adapters and merges them into the weights, so GRPO starts from
(and measures its KL against) a plain primed model, as without LoRA; the GRPO trainer then puts its own
adapters on that model. The memory itself is measured by benchmarks/bench_demo_memory.py.
"""

import json
import os
from pathlib import Path

import pytest

from openrs_nb import train
from openrs_nb.config import load_experiment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from openrs_nb.grpo import save_tiny_policy
    from openrs_nb.models import load_tokenizer

    return save_tiny_policy(load_tokenizer("demo"), tmp_path_factory.mktemp("tiny") / "policy")


def _weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_lora_priming_saves_a_merged_model_that_grpo_wraps_with_new_adapters(tmp_path, tiny_model, monkeypatch):
    import torch
    from peft import PeftModel
    from transformers import TrainerCallback

    monkeypatch.setenv("OPENRS_MMAP_THRESHOLD", "0")  # leave this test process's allocator as it is
    settings = dict(model_name_or_path=tiny_model, max_steps=1, save_steps=1, sft_steps=2, sft_examples=4,
                    dataset_size=8, per_device_train_batch_size=4, max_completion_length=8)
    cfg = load_experiment(2, "demo", lora=True, **settings)
    primed = train.format_priming(cfg, tmp_path)

    # A plain model: merged weights under the base model's names, no adapter left over.
    names = {p.name for p in primed.iterdir()}
    assert "model.safetensors" in names and not names & {"adapter_config.json", "adapter_model.safetensors"}
    weights, base = _weights(primed), _weights(Path(tiny_model))
    assert set(weights) == set(base) and not any("lora" in k for k in weights)
    # The adapters were trained and merged: every LoRA target moved, everything else kept its value.
    targets = tuple(f"{m}.weight" for m in cfg.lora_target_modules)
    for key, value in weights.items():
        moved = not torch.equal(value, base[key])
        assert moved == key.endswith(targets), key
    assert len(train.read_jsonl(tmp_path / train.PRIMING_LOSSES)) == cfg.sft_steps
    settings_saved = json.loads((primed / "priming.json").read_text())
    assert settings_saved["lora"] is True and settings_saved["lora_priming_lr_scale"] == train.LORA_PRIMING_LR_SCALE
    # An all-weights run does not take the LoRA-primed model for its own (nor the reverse).
    assert train.priming_complete(primed, cfg)
    assert not train.priming_complete(primed, load_experiment(2, "demo", lora=False, **settings))

    # GRPO: the primed model gets fresh adapters (B = 0, so step 1's policy is the primed model exactly);
    # the KL reference is that model with its adapters off, so no second copy of the weights is loaded.
    seen = {}

    class Look(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["peft"] = isinstance(model, PeftModel)
            base_weights = {k.replace("base_model.model.", "").replace(".base_layer", ""): v.detach().clone()
                            for k, v in model.named_parameters() if "lora_" not in k}
            shared = [k for k in weights if k in base_weights]
            seen["base_equal"] = len(shared) >= len(weights) - 1 and all(torch.equal(base_weights[k], weights[k])
                                                                          for k in shared)
            seen["lora_B_zero"] = all(not v.any() for k, v in model.named_parameters() if "lora_B" in k)
            seen["only_adapters_train"] = all("lora_A" in k or "lora_B" in k
                                              for k, v in model.named_parameters() if v.requires_grad)

    refs = []
    grpo_trainer = train._grpo_trainer_class()

    class KeepRef(grpo_trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            refs.append(self.ref_model)

    monkeypatch.setattr(train, "_grpo_trainer_class", lambda: KeepRef)
    train.train(cfg, tmp_path, callbacks=[Look()])
    assert seen == {"peft": True, "base_equal": True, "lora_B_zero": True, "only_adapters_train": True}
    assert refs == [None]  # TRL's reference under PEFT: the policy with its adapters disabled
    ckpt = train.latest_checkpoint(tmp_path)
    assert ckpt.name == "checkpoint-1" and (ckpt / "adapter_model.safetensors").exists()
    assert [r["step"] for r in train.read_jsonl(tmp_path / train.METRICS_FILE)] == [1]


def test_the_memory_limit_is_read_from_this_process_cgroup(tmp_path, monkeypatch):
    from openrs_nb import cpu

    v1, v2, none = tmp_path / "v1", tmp_path / "v2", tmp_path / "none"
    for d in (v1, v2, none):
        d.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(f"{2 * 2**30}\n")
    (v2 / "memory.max").write_text("1073741824\n")
    (none / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "unlimited"
    for dirs, expected in (([v1], 2 * 2**30), ([v2], 2**30), ([none], None), ([v1, v2], 2**30), ([], None)):
        monkeypatch.setattr(cpu, "_own_cgroup_dirs", lambda controller, dirs=dirs: dirs)
        assert cpu.cgroup_memory_limit() == expected


def test_large_blocks_are_mmapped_on_request_only():
    import platform
    import subprocess
    import sys

    code = ("import os; from openrs_nb.cpu import mmap_large_allocations as m; "
            "print(m(0), m(), m(1 << 20)); os.environ['OPENRS_MMAP_THRESHOLD'] = '0'; print(m())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    glibc = platform.libc_ver()[0] == "glibc"
    assert out == ["False", str(glibc), str(glibc), "False"]


def test_the_demo_switches_to_lora_under_its_own_cgroups_memory_limit(monkeypatch):
    from openrs_nb import config, cpu

    monkeypatch.setattr(cpu, "cgroup_memory_limit", lambda: 2 * 2**30)  # e.g. systemd-run -p MemoryMax=2G
    assert config.memory_limit_gib() == 2.0
    assert config.load_experiment(2, "demo").lora is True
    assert config.load_experiment(2, "demo", lora=False).lora is False
    base = config.load_experiment(2, "demo", lora=False).learning_rate
    assert config.load_experiment(2, "demo").learning_rate == base * config.LORA_LR_SCALE  # LoRA steps larger
    assert config.load_experiment(2, "demo", lora=True, learning_rate=3e-5).learning_rate == 3e-5
    monkeypatch.setattr(cpu, "cgroup_memory_limit", lambda: None)  # no limit: the machine's RAM
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert config.memory_limit_gib() == ram
    assert config.load_experiment(2, "demo").lora is (ram < config.LORA_BELOW_GIB)
