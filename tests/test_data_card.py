"""save_curated writes a Hub-style dataset card (huggingface_hub.DatasetCard) and a Parquet copy; no network."""

import json
import shutil

import pytest
from datasets import load_dataset, load_from_disk
from huggingface_hub import DatasetCard

from openrs_nb import data


@pytest.fixture
def saved(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ds = data.mix({"x": data.make_demo_dataset(7, seed=1)}, {"x": 7}, seed=1)
    steps = {"demo": [data.StepReport("loaded", 9, 9), data.StepReport("boxed", 9, 7, {"no_boxed": 2})]}
    out = data.save_curated(ds, tmp_path / "curated", card=dict(seed=1, steps=steps, sources={"x": "demo"}),
                            system_prompt="Think, then answer in \\boxed{}.")
    return ds, out


def test_the_card_has_hub_metadata_and_the_funnel(saved):
    ds, out = saved
    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["pretty_name"] == "Curated math training data (openrs_nb)"
    assert meta["size_categories"] == "n<1K" and meta["language"] == "en"
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "train.parquet"}]}]
    assert all((out / f["path"]).is_file() for c in meta["configs"] for f in c["data_files"])
    assert (out / "README.md").read_text().startswith("---\n")
    assert "| boxed | 9 | 7 | no_boxed: 2 |" in card.text and f"| rows | {len(ds)} |" in card.text
    assert json.loads((out / "curation.json").read_text())["rows"] == len(ds)


def test_parquet_copy_and_save_to_disk_hold_the_same_rows(saved, tmp_path):
    ds, out = saved
    from_disk = load_from_disk(str(out))
    from_parquet = load_dataset("parquet", data_files=str(out / "train.parquet"), split="train")
    assert len(from_parquet) == len(from_disk) == len(ds) == 7
    assert from_parquet.to_list() == from_disk.to_list()
    assert from_parquet[0]["prompt"][0] == {"role": "system", "content": "Think, then answer in \\boxed{}."}
    # The folder as a Hub repo would hold it (locally, datasets refuses a save_to_disk folder by its
    # state.json): load_dataset reads the card's `configs` and returns the same rows.
    repo = tmp_path / "as_hub_repo"
    shutil.copytree(out, repo, ignore=shutil.ignore_patterns("state.json"))
    assert load_dataset(str(repo), split="train").to_list() == from_disk.to_list()


@pytest.mark.parametrize("rows, label", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (7000, "1K<n<10K"),
                                         (18_615, "10K<n<100K"), (10**6, "1M<n<10M"), (10**8, "other")])
def test_size_category_bins(rows, label):
    assert data._size_category(rows) == label
