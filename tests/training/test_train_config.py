"""The shipped trainer configs load, and bad ones fail naming the field."""

from pathlib import Path

import pytest

from training.config import load_train_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_train_config(path)
    assert cfg.data.buckets and cfg.run.max_steps >= 1


def test_unknown_and_invalid_keys_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"optim\.lrr"):
        load_train_config(CONFIGS[0], overrides={"optim": {"lrr": 1}})
    with pytest.raises(ValueError, match=r"distributed\.strategy"):
        load_train_config(CONFIGS[0], overrides={"distributed": {"strategy": "zero3"}})
    with pytest.raises(ValueError, match="fsdp2 is for full finetuning"):
        load_train_config(CONFIGS[0], overrides={"distributed": {"strategy": "fsdp2"}})
