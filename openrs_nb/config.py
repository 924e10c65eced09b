"""Experiments as data: the paper's three GRPO runs (Table 5) and a CPU-sized demo of each.

`load_experiment(exp, profile, **overrides)` is the one entry point. Every field has a one-line
docstring (the string under it); `describe()` prints them next to their values.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXPERIMENTS = (1, 2, 3)
PROFILES = ("auto", "demo", "paper", "rehearsal")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
FORMAT_MODES = ("prefilled_think", "strict")
VLLM_MODES = ("server", "colocate")

PAPER_MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
PAPER_GPUS = 4  # 4×A40: 3 training processes + 1 vLLM server

SMOKE_ENV = "OPENRS_SMOKE"


def smoke_default() -> bool:
    """True when $OPENRS_SMOKE is set: notebooks shrink to a seconds-long run (the test suite sets it)."""
    return os.environ.get(SMOKE_ENV, "") not in ("", "0", "false", "False")


def project_root() -> Path:
    """The checkout holding this package (where runs/ lives); the current folder for other installs."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def project_path(path: str | os.PathLike) -> Path:
    """Resolve a relative path against the project root, so notebooks work from any working folder."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def default_run_dir(smoke: bool) -> Path:
    """Where notebooks write: runs/demo for the full tutorial, runs/smoke for the test suite's quick runs."""
    return project_path("runs/smoke" if smoke else "runs/demo")


# The authors' system prompt (exp 2/3), reworded with the same content. R1-Distill's chat template
# already opens the assistant turn with "<think>\n", so the model continues inside the think block.
SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The User asks a question and the Assistant "
    "solves it. The Assistant first reasons about the problem step by step and then gives the "
    "User the answer, with the final answer inside \\boxed{}. The reasoning is enclosed in "
    "<think> </think> tags and the answer in <answer> </answer> tags, i.e. "
    "<think> reasoning here </think> <answer> answer here </answer>."
)
# Experiment 3's addition, quoted from the paper (Section 3, Experiment 3).
ENGLISH_ONLY = " Reply in English only, do not use other languages."
# The demo's shorter instructions with the same format (a 102-token system prompt would double the
# sequence length the CPU has to train on).
DEMO_SYSTEM_PROMPT = (
    "Reason step by step inside <think> </think>, then give the final answer as <answer>\\boxed{answer}</answer>."
)

# Table 5 of the paper, verbatim. `table5_check()` maps each row onto the preset.
TABLE5: dict[str, Any] = {
    "bf16": True,
    "use_vllm": True,
    "vllm_device": "auto",
    "vllm_enforce_eager": True,
    "vllm_gpu_memory_utilization": 0.7,
    "vllm_max_model_len": 4608,
    "do_eval": False,
    "output_dir": "data/OpenRS-GRPO",
    "overwrite_output_dir": True,
    "gradient_accumulation_steps": 4,
    "gradient_checkpointing": True,
    "gradient_checkpointing_kwargs": {"use_reentrant": False},
    "learning_rate": 1.0e-06,
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
    "warmup_ratio": 0.1,
    "max_steps": 500,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 6,
    "per_device_eval_batch_size": 6,
    "max_prompt_length": 512,
    "max_completion_length": (3584, 4096),
    "num_generations": 6,
    "temperature": 0.7,
    "seed": 42,
    "log_completions": True,
    "log_level": "info",
    "logging_first_step": True,
    "logging_steps": 1,
    "logging_strategy": "steps",
    "save_strategy": "steps",
    "save_steps": 50,
    "report_to": "wandb",
    "reward_funcs": ("format", "accuracy (cosine)"),
    "reward_weights": (1.0, 2.0),
    "hub_model_id": "OpenRS-GRPO",
    "hub_strategy": "every_save",
    "push_to_hub": True,
}

# Table 5 rows that TRL 1.16 / transformers 5 no longer accept, and where each went.
TABLE5_GONE = {
    "vllm_device": "vLLM runs as its own server process on the 4th GPU (recipes/, train.launch_plan)",
    "vllm_enforce_eager": "a `vllm serve` flag now (--enforce_eager), set in the launch plan",
    "vllm_max_model_len": "renamed vllm_max_model_length",
    "overwrite_output_dir": "removed from transformers 5; resume=False starts a fresh output_dir",
    "warmup_ratio": "transformers 5 reads a float warmup_steps < 1 as a ratio",
    "max_prompt_length": "TRL 1.16 no longer truncates prompts: data.build_prompts drops longer ones",
    "output_dir": "chosen per run (04_train's output_dir parameter)",
    "reward_funcs": "reward_funcs, named by openrs_nb.rewards.REWARDS keys",
    "reward_weights": "reward_weights",
    "max_completion_length": "3584 (exp 2, 3) or 4096 (exp 1)",
}


@dataclass(frozen=True)
class Deviation:
    """One way this project's paper run differs from the authors' run, with where to read theirs."""

    authors: str
    """What the authors' run did."""
    here: str
    """What this project does instead."""
    source: str
    """Where the authors' behaviour can be read (paper, repository file at a commit)."""
    effect: str
    """What the difference is expected to change."""
    table5_rows: tuple[str, ...] = ()
    """Table 5 rows it concerns (table5_check marks them)."""


# The authors' code: knoveleng/open-rs @2889c47 (setup.py pins huggingface/trl @69ad852e5, transformers
# 4.49.0, vllm 0.7.2, math-verify 0.5.2). Everything else in the port follows them (test_config.py).
_OLD_TRL = "huggingface/trl @69ad852e5 trl/trainer/grpo_trainer.py"
TABLE5_DEVIATIONS: dict[str, Deviation] = {
    "log-prob temperature": Deviation(
        authors="log-probs of the raw logits: `_get_per_token_logps` returns "
                "`selective_log_softmax(logits, input_ids)`, no division by the sampling temperature 0.7",
        here="TRL 1.16 divides the logits by `temperature` first, so π_θ, π_old and π_ref are the sampling "
             "distribution's",
        source=f"{_OLD_TRL} `_get_per_token_logps`; trl 1.16.0 grpo_trainer.py `_get_per_token_logps_and_entropies`",
        effect="at T = 0.7 every log-prob, the k3 KL and the gradient differ: ∇ log softmax(z/T) carries a 1/T "
               "(1.43×) factor and the tempered softmax; not measured here (the CPU demo samples at T = 1, "
               "where the two agree)",
    ),
    "micro-batch groups": Deviation(
        authors="`RepeatRandomSampler` lists each prompt num_generations times in a row and completions are "
                "generated per micro-batch, so with per-device batch 6 = G a micro-batch was one prompt's group; "
                "`loss = (per_token_loss * completion_mask).sum() / completion_mask.sum()` averaged that "
                "group's tokens, and every group weighed the same in the step",
        here="TRL 1.16 `bnpo` is the same formula, but TRL generates once per optimizer step and "
             "`shuffle_sequence_dict` shuffles a process's completions before cutting micro-batches, so "
             "a micro-batch mixes groups",
        source=f"{_OLD_TRL} `RepeatRandomSampler`, `_prepare_inputs`, `compute_loss`; "
               "trl 1.16.0 grpo_trainer.py `_prepare_inputs`",
        effect="same per-token terms, different weights: a group's weight now grows with its completions' "
               "length relative to the others in its micro-batch (the authors' run gave each group equal "
               "weight); the size of the effect is not measured here",
    ),
    "attention kernel": Deviation(
        authors="`attn_implementation: flash_attention_2`",
        here="'sdpa' by default: flash-attn has no wheel guaranteed for torch 2.13; "
             "-p attn_implementation flash_attention_2 restores theirs where it is installed",
        source="knoveleng/open-rs @2889c47 recipes/grpo.yaml",
        effect="the same attention up to floating-point rounding; speed and memory differ",
    ),
    "vLLM eager mode": Deviation(
        authors="Table 5 and recipes/grpo.yaml say `vllm_enforce_eager: true`, but neither TRL's nor "
                "open-r1's GRPOConfig had that field: `TrlParser.set_defaults_with_config` returns unknown "
                "YAML keys as leftover strings, which `parse_args_and_config` drops, and TRL's `LLM(...)` call "
                "passes no enforce_eager, so vLLM 0.7.2 ran with CUDA graphs (its default)",
        here="the launch plan passes --enforce_eager true to `vllm serve`, as Table 5 says",
        source="knoveleng/open-rs @2889c47 recipes/grpo.yaml, src/open_r1/configs.py; huggingface/trl "
               "@69ad852e5 trl/trainer/grpo_config.py, trl/scripts/utils.py, trl/trainer/grpo_trainer.py",
        effect="slower generation and no GPU memory spent on CUDA graphs; the same sampling distribution "
               "up to rounding",
        table5_rows=("vllm_enforce_eager",),
    ),
    "cosine clamp": Deviation(
        authors="p = len / max_len is not clamped, so past max_len characters the cosine climbs again (a "
                "completion 2·max_len long scores like an empty one)",
        here="p clamped to [0, 1]: past max_len the reward stays at its long-answer value",
        source="knoveleng/open-rs @2889c47 src/open_r1/rewards.py `get_cosine_scaled_reward`",
        effect="only completions longer than cosine_max_len characters (3584 in exp 3) score differently",
    ),
    "unparseable gold": Deviation(
        authors="accuracy and cosine rewards return 1.0 when the gold answer does not parse",
        here="0.0, counted and logged (rewards/accuracy_reward/unparseable_gold, rewards/cosine_reward/…)",
        source="knoveleng/open-rs @2889c47 src/open_r1/rewards.py `accuracy_reward`, `get_cosine_scaled_reward`",
        effect="none on the gradient: either way that reward is one constant for every completion of the "
               "prompt, and a constant shared by a group cancels out of its advantages (Eq. 3); their logged "
               "reward and accuracy curves come out higher",
    ),
    "graded answer": Deviation(
        authors="math-verify 0.5.2 `parse(..., extraction_mode=\"first_match\")` with boxed_match_priority=0 "
                "tries the rightmost \\boxed{} first",
        here="the last closed \\boxed{} as well (openrs_nb.grading), with math-verify 0.9",
        source="knoveleng/open-rs @2889c47 src/open_r1/rewards.py; huggingface/Math-Verify @0.5.2 "
               "src/math_verify/parser.py (\"rightmost first\")",
        effect="the same answer is graded on completions that end in a closed box; listed because "
               "\"first_match\" reads as if the first box counted",
    ),
    "trackers": Deviation(
        authors="`report_to: wandb`",
        here="metrics go to output_dir/metrics.jsonl; -p report_to wandb logs there too",
        source="paper Table 5; knoveleng/open-rs @2889c47 recipes/grpo.yaml",
        effect="none on training",
        table5_rows=("report_to",),
    ),
    "Hub uploads": Deviation(
        authors="`push_to_hub: true` to OpenRS-GRPO at every save",
        here="opt-in (-p push_to_hub True), so a tutorial run never uploads by surprise; hub_model_id and "
             "hub_strategy apply only then",
        source="paper Table 5; knoveleng/open-rs @2889c47 recipes/grpo.yaml",
        effect="none on training",
        table5_rows=("push_to_hub", "hub_model_id", "hub_strategy"),
    ),
}


@dataclass
class ExperimentConfig:
    """One GRPO run: the paper's Table 5, its per-experiment choices, and the TRL 1.16 port."""

    exp: int = 3
    """Which experiment of the paper: 1 (open-s1), 2 (open-rs mix) or 3 (mix + cosine reward)."""
    profile: str = "demo"
    """'demo' (embedded model and data, CPU-sized), 'paper' (Hub model and data, 4×A40) or 'rehearsal'
    (the paper's accelerate launch on CPU: 2 processes, demo model and data, a few steps)."""

    # --- model and data -------------------------------------------------------------------------
    model_name_or_path: str = "demo"
    """Policy to train: a Hub id, a local path, or 'demo' (the embedded SmolLM2-135M-Instruct)."""
    dataset: str = "demo"
    """Training data: a Hub id, a local JSONL/Parquet path, or 'demo' (generated math problems)."""
    dataset_size: int | None = None
    """Rows of training data to use (None = all). The demo generator makes this many."""
    demo_levels: list[int] = field(default_factory=lambda: [1])
    """Difficulty levels of generated demo problems (1 = two-number addition … 5 = word problems)."""
    system_prompt: str = SYSTEM_PROMPT
    """System message of every training prompt (exp 3 appends the English-only sentence)."""
    attn_implementation: str = "sdpa"
    """Attention kernel: 'sdpa' works everywhere; 'flash_attention_2' if flash-attn is installed."""

    # --- rewards --------------------------------------------------------------------------------
    reward_funcs: list[str] = field(default_factory=lambda: ["format", "accuracy"])
    """Reward functions by name (keys of openrs_nb.rewards.REWARDS), summed with reward_weights."""
    reward_weights: list[float] = field(default_factory=lambda: [1.0, 2.0])
    """Weight of each reward (Table 5: format 1.0, accuracy or cosine 2.0)."""
    format_mode: str = "prefilled_think"
    """'prefilled_think': template ends the prompt with <think> (R1-Distill); 'strict': it does not."""
    cosine_max_len: int = 3584
    """Length (characters) at which the cosine reward reaches its long-answer value (exp 3)."""

    # --- Table 5: optimisation --------------------------------------------------------------------
    learning_rate: float = 1.0e-6
    """Peak learning rate (Table 5)."""
    lr_scheduler_type: str = "cosine_with_min_lr"
    """Cosine decay that stops at min_lr_rate × peak (Table 5)."""
    min_lr_rate: float = 0.1
    """Floor of the cosine schedule as a fraction of the peak learning rate (Table 5)."""
    warmup_ratio: float = 0.1
    """Fraction of steps spent warming up (Table 5; passed to transformers 5 as warmup_steps=0.1)."""
    max_steps: int = 500
    """Optimizer steps (Table 5: 500; the paper reports checkpoints at steps 100, 50, 50)."""
    per_device_train_batch_size: int = 6
    """Completions per device per micro-batch (Table 5: 6 = one prompt's group)."""
    gradient_accumulation_steps: int = 4
    """Micro-batches per optimizer step (Table 5: 4)."""
    gradient_checkpointing: bool = True
    """Recompute activations in backward to save memory (Table 5, use_reentrant False)."""
    bf16: bool = True
    """bfloat16 mixed precision (Table 5). On CPU (demo): autocast over fp32 weights for the training
    passes and a bf16 copy of the weights for sampling, only on CPUs with bf16 instructions."""
    seed: int = 42
    """Random seed (Table 5)."""

    # --- Table 5: generation ----------------------------------------------------------------------
    num_generations: int = 6
    """G, completions sampled per prompt; the group of Eq. 3 (Table 5: 6)."""
    max_prompt_length: int = 512
    """Longest prompt in tokens; longer prompts are dropped in the data step (Table 5: 512)."""
    max_completion_length: int = 3584
    """Longest completion in tokens (Table 5: 4096 for exp 1, 3584 for exp 2 and 3)."""
    temperature: float = 0.7
    """Sampling temperature of training rollouts (Table 5)."""

    # --- Table 5: logging and saving ----------------------------------------------------------------
    logging_steps: int = 1
    """Log every step (Table 5)."""
    save_steps: int = 50
    """Checkpoint every this many steps (Table 5: 50)."""
    log_completions: bool = True
    """TRL prints and saves sample completions each step (Table 5); completions.jsonl is written anyway."""
    report_to: str = "none"
    """Extra trackers for transformers ('wandb', 'tensorboard'); metrics.jsonl is always written."""
    push_to_hub: bool = False
    """Push checkpoints to the Hub as hub_model_id (Table 5 pushes; opt-in here)."""
    hub_model_id: str = "OpenRS-GRPO"
    """Hub repository name used when push_to_hub is on (Table 5)."""

    # --- TRL 1.16 port: what the authors' TRL (huggingface/trl @69ad852e5) did by default -------------
    beta: float = 0.04
    """KL coefficient β of Eq. 1 (old TRL default; TRL 1.16 defaults to 0.0)."""
    epsilon: float = 0.2
    """Clipping range ε of Eq. 1."""
    loss_type: str = "bnpo"
    """Token normalisation: 'bnpo' = Σ loss·mask / Σ mask per micro-batch, the authors' TRL's formula."""
    scale_rewards: bool = True
    """Divide advantages by the group std (Eq. 3); False gives Dr. GRPO's unscaled advantages."""
    vllm_importance_sampling_correction: bool = False
    """TRL 1.16 corrects for vLLM/trainer log-prob mismatch; the authors' TRL did not."""
    use_bias_correction_kl: bool = False
    """TRL 1.16 option to importance-weight the KL term; off, as in the authors' TRL."""

    # --- hardware and launch ------------------------------------------------------------------------
    use_vllm: bool = True
    """Generate rollouts with vLLM (Table 5); the CPU demo uses transformers generate."""
    vllm_mode: str = "server"
    """'server': vLLM on its own GPU, training on the rest; 'colocate': both on each GPU."""
    vllm_gpu_memory_utilization: float = 0.7
    """Share of the vLLM GPU's memory vLLM may take (Table 5)."""
    vllm_max_model_length: int = 4608
    """vLLM context length = max prompt + max completion (Table 5: 4608)."""
    vllm_server_base_url: str | None = None
    """URL of the vLLM server in server mode (launch_plan sets it; None = TRL's localhost:8000)."""
    num_gpus: int = PAPER_GPUS
    """GPUs on each machine; in server mode one serves vLLM and num_gpus − 1 train."""
    num_machines: int = 1
    """Machines for a multi-node accelerate launch (server mode: vLLM runs on machine 0)."""
    use_cpu: bool = False
    """Train on CPU (the demo profile)."""
    num_processes: int = 0
    """Training processes per machine; 0 = one per training GPU (the CPU rehearsal sets 2)."""

    # --- LoRA (any profile) ---------------------------------------------------------------------------
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights: fits Binder's 2 GB or one small GPU."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (effective scale alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch."""
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Linear layers that get adapters."""

    # --- demo-only: format priming ----------------------------------------------------------------------
    sft_steps: int = 0
    """Supervised format-priming steps before GRPO (demo only; the paper needs none, see 04_train)."""
    sft_examples: int = 64
    """Worked examples the format-priming step trains on."""
    sft_learning_rate: float = 5e-5
    """Learning rate of the format-priming step."""

    # ------------------------------------------------------------------------------------------------
    @property
    def train_processes(self) -> int:
        """Training processes across all machines (server mode leaves one GPU to vLLM)."""
        if self.num_processes:
            return self.num_processes * self.num_machines
        per_machine = self.num_gpus - 1 if (self.use_vllm and self.vllm_mode == "server") else self.num_gpus
        return 1 if self.use_cpu else max(1, per_machine) * self.num_machines

    @property
    def prompts_per_step(self) -> int:
        """Distinct prompts per optimizer step (paper: 3 × 6 × 4 / 6 = 12)."""
        completions = self.train_processes * self.per_device_train_batch_size * self.gradient_accumulation_steps
        return completions // self.num_generations

    def grpo_kwargs(self, output_dir: str = "runs/train") -> dict[str, Any]:
        """Keyword arguments of `trl.GRPOConfig` for this run (inspectable on any machine)."""
        kw: dict[str, Any] = dict(
            output_dir=str(output_dir),
            learning_rate=self.learning_rate,
            lr_scheduler_type=self.lr_scheduler_type,
            lr_scheduler_kwargs={"min_lr_rate": self.min_lr_rate},
            warmup_steps=self.warmup_ratio,  # transformers 5: a float < 1 is a ratio
            max_steps=self.max_steps,
            num_train_epochs=1,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            gradient_checkpointing=self.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if self.gradient_checkpointing else None,
            bf16=self.bf16,
            seed=self.seed,
            num_generations=self.num_generations,
            max_completion_length=self.max_completion_length,
            temperature=self.temperature,
            beta=self.beta,
            epsilon=self.epsilon,
            loss_type=self.loss_type,
            scale_rewards="group" if self.scale_rewards else "none",
            reward_weights=list(self.reward_weights),
            use_vllm=self.use_vllm,
            logging_strategy="steps",
            logging_steps=self.logging_steps,
            logging_first_step=True,
            log_level="info",
            log_completions=self.log_completions,
            save_strategy="steps",
            save_steps=self.save_steps,
            do_eval=False,
            per_device_eval_batch_size=self.per_device_train_batch_size,
            report_to=self.report_to,
            push_to_hub=self.push_to_hub,
            use_cpu=self.use_cpu,
            use_bias_correction_kl=self.use_bias_correction_kl,
            # On CPU, bf16 means autocast over fp32 weights: bf16 weights would round away updates
            # smaller than 2^-8 of a weight (lr 1e-5 steps), and DeepSpeed's fp32 master copy is GPU-only.
            model_init_kwargs={"attn_implementation": self.attn_implementation,
                               "dtype": "bfloat16" if self.bf16 and not self.use_cpu else "float32"},
        )
        if self.push_to_hub:
            kw.update(hub_model_id=self.hub_model_id, hub_strategy="every_save")
        if self.use_vllm:
            kw.update(
                vllm_mode=self.vllm_mode,
                vllm_gpu_memory_utilization=self.vllm_gpu_memory_utilization,
                vllm_max_model_length=self.vllm_max_model_length,
                vllm_importance_sampling_correction=self.vllm_importance_sampling_correction,
            )
            if self.vllm_mode == "server" and self.vllm_server_base_url:
                kw["vllm_server_base_url"] = self.vllm_server_base_url
        return kw

    def to_grpo_config(self, output_dir: str = "runs/train"):
        """Build the `trl.GRPOConfig` (needs hardware that supports the settings, e.g. bf16)."""
        from trl import GRPOConfig

        return GRPOConfig(**self.grpo_kwargs(output_dir))

    def describe(self) -> str:
        """Every field with its value and docstring, for the notebook and logs."""
        docs = field_docs()
        lines = [f"Experiment {self.exp}, profile {self.profile!r}"]
        for f in dataclasses.fields(self):
            lines.append(f"  {f.name:36s} = {getattr(self, f.name)!r:<30}  # {docs.get(f.name, '')}")
        return "\n".join(lines)


def field_docs() -> dict[str, str]:
    """Field name -> its docstring, read from this module's source."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(ExperimentConfig))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = nxt.value.value
    return docs


@functools.cache  # once per process: 06 loads three experiments
def _log_bf16_choice(bf16: bool) -> None:
    logger.info("bf16=%s: this CPU %s bf16 instructions%s; pass bf16=%s to override.", bf16,
                "has" if bf16 else "has no", " (bf16 autocast for training, a bf16 copy for sampling)" if bf16 else "",
                not bf16)


# Per-experiment choices from the paper text (Section 3).
_PAPER_EXPERIMENTS: dict[int, dict[str, Any]] = {
    1: dict(dataset="knoveleng/open-s1", reward_funcs=["format", "accuracy"], max_completion_length=4096),
    2: dict(dataset="knoveleng/open-rs", reward_funcs=["format", "accuracy"], max_completion_length=3584),
    3: dict(
        dataset="knoveleng/open-rs",
        reward_funcs=["format", "cosine"],
        max_completion_length=3584,
        cosine_max_len=3584,
        system_prompt=SYSTEM_PROMPT + ENGLISH_ONLY,
    ),
}

# The demo keeps each experiment's rewards but shrinks everything to a 2-core CPU: SmolLM2-135M,
# generated arithmetic problems, ≤64-token completions, 4 prompts × 4 completions a step, and a deliberately
# short format priming (3 SFT steps on 24 examples) that leaves the format partly unlearned, so the
# groups differ in reward and GRPO has something to learn. 04_train shows what it learns.
# 24 steps (6.3 minutes of training on 2 cores): the exp 2 demo's mean total reward gained +0.80, +0.66 and
# +1.03 from the first to the last quarter of them (seeds 42, 1, 2; 04 requires +0.25; README). `make
# experiments` trains its three runs 40 steps.
_DEMO: dict[str, Any] = dict(
    model_name_or_path="demo",
    dataset="demo",
    dataset_size=512,
    format_mode="strict",
    learning_rate=1e-5,
    lr_scheduler_type="constant_with_warmup",
    warmup_ratio=0.0,
    max_steps=24,
    per_device_train_batch_size=16,
    gradient_accumulation_steps=1,
    gradient_checkpointing=True,  # Table 5's value; peak memory of a demo step 5.1 -> 3.5 GiB (bench_demo_memory.py)
    bf16=False,  # load_experiment turns it on for the demo where the CPU has bf16 instructions (openrs_nb.cpu)
    num_generations=4,
    max_prompt_length=256,
    max_completion_length=64,
    temperature=1.0,
    save_steps=12,
    log_completions=False,
    cosine_max_len=200,
    use_vllm=False,
    num_gpus=0,
    use_cpu=True,
    sft_steps=3,
    sft_examples=24,
)
# What makes the demo's three experiments differ as the paper's do (Section 3): exp 1 trains on the hard
# level only with the longest budget; exps 2-3 on hard, medium and easy levels 3 : 3 : 1 (make_demo_dataset
# cycles through the list) with the budget × 3584/4096. The levels are the solve rates measured on the
# primed demo model: openrs_nb.experiments.MEASURED -> design_from_rates (tests/test_experiments.py checks
# that this table is that design).
_DEMO_EXPERIMENTS: dict[int, dict[str, Any]] = {
    1: dict(demo_levels=[3], max_completion_length=64),
    2: dict(demo_levels=[3, 3, 3, 1, 1, 1, 2], max_completion_length=56),
    3: dict(demo_levels=[3, 3, 3, 1, 1, 1, 2], max_completion_length=56),
}


# The paper's launch rehearsed on CPU ("rehearse the launch before you rent GPUs"): the demo preset,
# started by train.launch_plan / run_launch as `accelerate launch` with 2 training processes (gloo, no
# DeepSpeed, no vLLM) and tiny shapes. Like the authors' per-device batch 6 = G, each micro-batch is
# one prompt's group (4 = G), accumulated twice: 2 processes × 4 × 2 / 4 = 4 prompts per step.
_REHEARSAL: dict[str, Any] = dict(
    num_processes=2,
    max_steps=4,
    save_steps=2,
    dataset_size=64,
    per_device_train_batch_size=4,
    gradient_accumulation_steps=2,
    max_completion_length=16,
    sft_steps=0,
)


def cuda_gpu_count() -> int:
    """Number of visible CUDA GPUs (0 when torch or CUDA is missing)."""
    if importlib.util.find_spec("torch") is None:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def memory_limit_gib() -> float:
    """Memory this process may use: its own cgroup's limit (containers, Binder, systemd-run) or the machine's RAM."""
    from openrs_nb.cpu import cgroup_memory_limit

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = cgroup_memory_limit()
    return min(ram, limit if limit is not None else ram) / 2**30


# LoRA's low-rank update moves the model less per step than all weights at the same learning rate. Exp-2 demo,
# seed 42, 40 steps, mean total reward first -> last quarter (04's learning check needs +0.25): at the
# all-weights 1e-5, +0.02 (0.20 -> 0.22, KL <= 2e-3; 04 under a 2 GiB cgroup); at 20 × (2e-4), +1.08 (0.16 -> 1.24,
# accuracy reward 0.06 -> 0.26, KL up to 0.33). 20 is also the priming's measured scale (LORA_PRIMING_LR_SCALE).
LORA_LR_SCALE = 20.0
LORA_BELOW_GIB = 4.0  # a full fp32 fine-tune of the 135M demo model with Adam peaks near 2.2 GB


def resolve_profile(profile: str, verbose: bool = True) -> str:
    """Turn 'auto' into 'paper' (≥ 4 CUDA GPUs) or 'demo', and say which and why."""
    _check_choice("profile", profile, PROFILES)
    if profile != "auto":
        return profile
    n = cuda_gpu_count()
    chosen = "paper" if n >= PAPER_GPUS else "demo"
    if verbose:
        why = f"{n} CUDA GPU(s) visible; the paper profile needs {PAPER_GPUS}"
        logger.info("profile='auto' chose %r: %s.", chosen, why)
    return chosen


def load_experiment(exp: int = 3, profile: str = "auto", **overrides: Any) -> ExperimentConfig:
    """The config of experiment `exp` (1, 2, 3) for `profile` ('auto', 'demo', 'paper').

    Overrides replace fields by name (`learning_rate=5e-6`); unknown names and invalid values
    raise ValueError before anything heavy happens.
    """
    _check_choice("exp", exp, EXPERIMENTS)
    profile = resolve_profile(profile)
    names = {f.name for f in dataclasses.fields(ExperimentConfig)} - {"exp", "profile"}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; valid names: {', '.join(sorted(names))}")
    values: dict[str, Any] = dict(exp=exp, profile=profile, model_name_or_path=PAPER_MODEL, **_PAPER_EXPERIMENTS[exp])
    if profile in ("demo", "rehearsal"):
        values.update(_DEMO, system_prompt=DEMO_SYSTEM_PROMPT + (ENGLISH_ONLY if exp == 3 else ""))
        values.update(_DEMO_EXPERIMENTS[exp])
        if profile == "rehearsal":
            values.update(_REHEARSAL)
        if profile == "demo" and "bf16" not in overrides:
            from openrs_nb.cpu import has_fast_bf16

            values["bf16"] = has_fast_bf16()
            _log_bf16_choice(values["bf16"])
        if "lora" not in overrides and memory_limit_gib() < LORA_BELOW_GIB:
            values["lora"] = True
            logger.info("%.1f GiB of memory: the demo trains LoRA adapters (lora=True) instead of all weights; "
                        "pass lora=False to override.", memory_limit_gib())
        if profile == "demo" and overrides.get("lora", values.get("lora")) and "learning_rate" not in overrides:
            values["learning_rate"] = values["learning_rate"] * LORA_LR_SCALE
            logger.info("LoRA: learning_rate %.0e (the all-weights demo's × %g); pass learning_rate to override.",
                        values["learning_rate"], LORA_LR_SCALE)
    values.update(overrides)
    cfg = ExperimentConfig(**{k: _coerce(k, v) for k, v in values.items()})
    validate(cfg)
    return cfg


def _coerce(name: str, value: Any) -> Any:
    """Accept papermill/CLI spellings: ints for floats, 'true'/'false' for bools."""
    ftype = ExperimentConfig.__dataclass_fields__[name].type
    if ftype == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if ftype == "bool" and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if ftype == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}")


def validate(cfg: ExperimentConfig) -> None:
    """Raise ValueError naming the first invalid field and what would be valid."""
    _check_choice("exp", cfg.exp, EXPERIMENTS)
    _check_choice("profile", cfg.profile, PROFILES[1:])
    _check_choice("loss_type", cfg.loss_type, LOSS_TYPES)
    _check_choice("format_mode", cfg.format_mode, FORMAT_MODES)
    _check_choice("vllm_mode", cfg.vllm_mode, VLLM_MODES)
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        expected = {"int": int, "float": (int, float), "bool": bool, "str": str}.get(f.type)
        if expected and (not isinstance(v, expected) or (f.type != "bool" and isinstance(v, bool))):
            raise ValueError(f"{f.name}={v!r} should be of type {f.type}")
    positive = ["max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_prompt_length",
                "max_completion_length", "logging_steps", "save_steps", "cosine_max_len", "lora_r", "lora_alpha",
                "num_machines", "sft_examples"]
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name}={getattr(cfg, name)!r} must be a positive integer")
    for name in ("learning_rate", "temperature"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"{name}={getattr(cfg, name)!r} must be > 0")
    for name in ("beta", "epsilon", "sft_steps", "num_gpus", "sft_learning_rate"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name}={getattr(cfg, name)!r} must be >= 0")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ValueError(f"warmup_ratio={cfg.warmup_ratio!r} must be in [0, 1)")
    if not 0 <= cfg.min_lr_rate <= 1:
        raise ValueError(f"min_lr_rate={cfg.min_lr_rate!r} must be in [0, 1]")
    if cfg.num_generations < 2:
        raise ValueError(f"num_generations={cfg.num_generations} must be >= 2: a group of one has no baseline")
    if cfg.per_device_train_batch_size % cfg.num_generations:
        # TRL 1.16 only needs the generation batch (batch × processes × accumulation) to divide by G: it
        # normalises whole groups, then shuffles completions across micro-batches, which mixes groups
        # anyway (TABLE5_DEVIATIONS["micro-batch groups"]). We keep the authors' shape (6 = G per device)
        # as the rule, so prompts_per_step is a whole number for any process count.
        raise ValueError(
            f"per_device_train_batch_size={cfg.per_device_train_batch_size} must be a multiple of "
            f"num_generations={cfg.num_generations}"
        )
    if len(cfg.reward_funcs) != len(cfg.reward_weights) or not cfg.reward_funcs:
        raise ValueError(
            f"reward_funcs {cfg.reward_funcs} and reward_weights {cfg.reward_weights} need the same non-zero length"
        )
    from openrs_nb.rewards import REWARDS

    bad = [r for r in cfg.reward_funcs if r not in REWARDS]
    if bad:
        raise ValueError(f"unknown reward(s) {bad}; choose from {', '.join(sorted(REWARDS))}")
    if cfg.bf16 and cfg.use_cpu:
        from openrs_nb.cpu import BF16_FLAGS, has_fast_bf16

        if not has_fast_bf16():
            raise ValueError(f"bf16=True on a CPU without bf16 instructions ({', '.join(BF16_FLAGS)}): torch "
                             "would emulate bf16 there, slower than fp32; set bf16=False")
    if cfg.use_vllm and cfg.use_cpu:
        raise ValueError("use_vllm=True needs CUDA GPUs; the CPU demo generates with transformers (use_vllm False)")
    if cfg.num_processes < 0:
        raise ValueError(f"num_processes={cfg.num_processes} must be >= 0 (0 = one per training GPU)")
    if cfg.profile == "rehearsal" and cfg.train_processes < 2:
        raise ValueError(f"the rehearsal launches several processes: num_processes={cfg.num_processes} must be >= 2")
    if cfg.use_vllm and cfg.max_prompt_length + cfg.max_completion_length > cfg.vllm_max_model_length:
        raise ValueError(
            f"max_prompt_length {cfg.max_prompt_length} + max_completion_length {cfg.max_completion_length} = "
            f"{cfg.max_prompt_length + cfg.max_completion_length} tokens do not fit vllm_max_model_length "
            f"{cfg.vllm_max_model_length}: raise vllm_max_model_length or shorten the completions"
        )
    if cfg.use_vllm and cfg.vllm_mode == "server" and cfg.num_gpus < 2:
        raise ValueError(f"vllm_mode='server' needs num_gpus >= 2 (one serves vLLM), got {cfg.num_gpus}; "
                         "use vllm_mode='colocate' on one GPU")


def table5_check(cfg: ExperimentConfig) -> list[tuple[str, Any, Any, str]]:
    """Each Table 5 row as (row, paper value, preset value, how it maps), for display and tests."""
    kw = cfg.grpo_kwargs()
    deviation = {row: d for d in TABLE5_DEVIATIONS.values() for row in d.table5_rows}
    rows = []
    for key, paper in TABLE5.items():
        if key in deviation:
            ours = "--enforce_eager true" if key == "vllm_enforce_eager" else kw.get(key, getattr(cfg, key, None))
            rows.append((key, paper, ours, "deviation: " + deviation[key].here))
        elif key in TABLE5_GONE:
            ours = {
                "vllm_max_model_len": cfg.vllm_max_model_length,
                "warmup_ratio": kw["warmup_steps"],
                "max_prompt_length": cfg.max_prompt_length,
                "reward_funcs": cfg.reward_funcs,
                "reward_weights": kw["reward_weights"],
                "max_completion_length": cfg.max_completion_length,
            }.get(key)
            rows.append((key, paper, ours, TABLE5_GONE[key]))
        else:
            rows.append((key, paper, kw.get(key), "same"))
    return rows
