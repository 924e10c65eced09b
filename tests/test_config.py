"""The experiment presets: Table 5, the per-experiment differences, validation."""

import dataclasses

import pytest

from openrs_nb import config
from openrs_nb.config import TABLE5, load_experiment, table5_check


@pytest.mark.parametrize("exp", [1, 2, 3])
def test_every_table5_row_matches_the_paper_preset(exp):
    cfg = load_experiment(exp, "paper")
    rows = {row: (paper, ours, how) for row, paper, ours, how in table5_check(cfg)}
    assert set(rows) == set(TABLE5)
    for row, (paper, ours, how) in rows.items():
        if how == "same":
            assert ours == paper, f"Table 5 row {row}: paper {paper!r}, preset {ours!r}"
    # Rows TRL 1.16 renamed or moved still carry the paper's value.
    assert rows["vllm_max_model_len"][1] == 4608
    assert rows["warmup_ratio"][1] == 0.1
    assert rows["max_prompt_length"][1] == 512
    assert rows["reward_weights"][1] == [1.0, 2.0]
    assert rows["max_completion_length"][1] == (4096 if exp == 1 else 3584)
    assert cfg.grpo_kwargs()["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}
    assert cfg.grpo_kwargs()["gradient_checkpointing_kwargs"] == {"use_reentrant": False}


def test_table5_marks_each_deviation_row_and_every_deviation_names_its_source():
    rows = {row: how for row, _, _, how in table5_check(load_experiment(3, "paper"))}
    marked = {row for row, how in rows.items() if how.startswith("deviation: ")}
    claimed = {row for d in config.TABLE5_DEVIATIONS.values() for row in d.table5_rows}
    assert marked == claimed and claimed <= set(TABLE5)
    assert {"report_to", "push_to_hub", "vllm_enforce_eager"} <= marked
    for name, d in config.TABLE5_DEVIATIONS.items():
        assert d.authors and d.here and d.effect, name
        # every source is public: the paper, the authors' repository or a library, at a commit or version
        assert any(s in d.source for s in ("Table 5", "@2889c47", "@69ad852e5", "@0.5.2")), (name, d.source)


def test_deviations_describe_what_the_port_really_does():
    cfg = load_experiment(3, "paper")
    kw = cfg.grpo_kwargs()
    # rows that say "same as the authors" / "opt-in" must be true of the preset
    assert cfg.attn_implementation == "sdpa" and "sdpa" in config.TABLE5_DEVIATIONS["attention kernel"].here
    assert kw["report_to"] == "none" and kw["push_to_hub"] is False and "hub_model_id" not in kw
    assert kw["loss_type"] == "bnpo" and cfg.per_device_train_batch_size == cfg.num_generations == 6
    from openrs_nb.rewards import cosine_scaled

    # the cosine clamp: past max_len the reward stays at its long-answer value (theirs cycles back up)
    assert cosine_scaled(2000, False, max_len=1000) == pytest.approx(-0.5)
    assert cosine_scaled(2000, False, max_len=1000, clamp=False) == pytest.approx(0.0)


def test_experiments_differ_as_the_paper_says():
    e1, e2, e3 = (load_experiment(e, "paper") for e in (1, 2, 3))
    assert e1.dataset == "knoveleng/open-s1" and e2.dataset == e3.dataset == "knoveleng/open-rs"
    assert e1.reward_funcs == e2.reward_funcs == ["format", "accuracy"]
    assert e3.reward_funcs == ["format", "cosine"] and e3.cosine_max_len == 3584
    assert "English only" not in e2.system_prompt and e3.system_prompt.endswith(config.ENGLISH_ONLY)
    assert "\\boxed{}" in e2.system_prompt and "<think>" in e2.system_prompt


def test_trl_port_settings_follow_the_authors_trl():
    kw = load_experiment(3, "paper").grpo_kwargs()
    assert kw["beta"] == 0.04 and kw["loss_type"] == "bnpo" and kw["epsilon"] == 0.2
    assert kw["vllm_importance_sampling_correction"] is False and kw["use_bias_correction_kl"] is False
    assert kw["warmup_steps"] == 0.1  # transformers 5: a float < 1 is a ratio


def test_paper_batch_geometry_is_12_prompts_per_step():
    cfg = load_experiment(2, "paper")
    assert cfg.train_processes == 3 and cfg.prompts_per_step == 12  # 3 × 6 × 4 / 6


def test_grpo_kwargs_are_accepted_by_trl():
    from trl import GRPOConfig

    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    for exp in (1, 2, 3):
        for profile in ("demo", "paper"):
            assert set(load_experiment(exp, profile).grpo_kwargs()) <= names
    demo = load_experiment(3, "demo").to_grpo_config("/tmp/openrs-test-cfg")
    assert demo.num_generations == 4 and demo.use_cpu and demo.beta == 0.04


def test_auto_profile_says_what_it_chose(capsys, monkeypatch):
    monkeypatch.setattr(config, "cuda_gpu_count", lambda: 0)
    assert load_experiment(1, "auto").profile == "demo"
    assert "chose 'demo'" in capsys.readouterr().out
    monkeypatch.setattr(config, "cuda_gpu_count", lambda: 4)
    assert config.resolve_profile("auto") == "paper"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(exp=4), "exp=4 is not valid; choose one of 1, 2, 3"),
        (dict(profile="gpu"), "profile='gpu' is not valid; choose one of 'auto', 'demo', 'paper'"),
        (dict(max_steps=-5), "max_steps=-5 must be a positive integer"),
        (dict(learning_rat=1e-6), "unknown config field(s) ['learning_rat']"),
        (dict(loss_type="ppo"), "loss_type='ppo' is not valid"),
        (dict(reward_funcs=["format", "speed"], reward_weights=[1.0, 1.0]), "unknown reward(s) ['speed']"),
        (dict(num_generations=3), "must be a multiple of num_generations=3"),
        (dict(learning_rate="fast"), "learning_rate='fast' should be of type float"),
    ],
)
def test_invalid_values_fail_with_the_valid_choices(kwargs, message):
    kwargs = {"exp": 3, "profile": "demo", **kwargs}
    with pytest.raises(ValueError) as err:
        load_experiment(**kwargs)
    assert message in str(err.value)


def test_overrides_are_coerced_and_applied():
    cfg = load_experiment(2, "demo", learning_rate=1, lora="true", max_steps=7.0)
    assert cfg.learning_rate == 1.0 and cfg.lora is True and cfg.max_steps == 7


def test_every_field_has_a_docstring():
    docs = config.field_docs()
    missing = [f.name for f in dataclasses.fields(config.ExperimentConfig) if not docs.get(f.name)]
    assert not missing
    assert "Table 5" in load_experiment(3, "paper").describe()


def test_project_paths_are_independent_of_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config.project_path("runs/demo") == config.project_root() / "runs" / "demo"
    assert config.default_run_dir(True).name == "smoke"


def test_the_bf16_choice_is_logged_once_per_process(caplog):
    config._log_bf16_choice.cache_clear()
    with caplog.at_level("INFO", logger="openrs_nb.config"):
        for exp in (1, 2, 3):
            load_experiment(exp, "demo")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bf16=")]
    assert len(lines) == 1, lines
    assert "bf16 instructions" in lines[0]
