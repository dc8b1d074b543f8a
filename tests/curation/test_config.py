import dataclasses
import json
import re
from pathlib import Path

import pytest

from curation.core.config import RunConfig, from_dict, load_config, to_dict

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_and_profiles():
    assert load_config().profile == "cpu"
    tiny = load_config(profile="tiny")
    assert tiny.decode.work_short_side < RunConfig().decode.work_short_side


def test_unknown_keys_fail_with_their_path(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[motion]\nsample_fsp = 2\n")
    with pytest.raises(ValueError, match=r"motion\.sample_fsp"):
        load_config(f)
    with pytest.raises(ValueError, match=r"decide\.rules\[0\]\.colum"):
        load_config(overrides={"decide": {"rules": [{"colum": "x"}]}})


def test_close_misspellings_get_a_suggestion():
    with pytest.raises(ValueError, match=r"^unknown config key: split\.min_clip_sec \(did you mean split\.min_clip_s\?\)$"):
        load_config(overrides={"split": {"min_clip_sec": 1}})
    with pytest.raises(ValueError, match=r"^unknown config key: dedupe \(did you mean dedup\?\)$"):
        load_config(overrides={"dedupe": {}})
    with pytest.raises(ValueError) as e:
        load_config(overrides={"split": {"zzz": 1}})
    assert "did you mean" not in str(e.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"split": {"min_clip_s": "two"}}, "split.min_clip_s must be a number, got 'two'"),
        ({"runtime": {"partition_size": 6.5}}, "runtime.partition_size must be an integer, got 6.5"),
        ({"caption": {"enabled": "no"}}, "caption.enabled must be true or false, got 'no'"),
        ({"decide": {"keep_tags": "over_edited"}}, "decide.keep_tags must be a list, got 'over_edited'"),
        ({"decide": {"tag_thresholds": {"lecture": "high"}}}, "decide.tag_thresholds.lecture must be a number, got 'high'"),
        ({"decide": {"rules": [{"column": "motion_score", "min": "0.1"}]}}, "decide.rules[0].min must be a number, got '0.1'"),
    ],
)
def test_values_of_the_wrong_type_name_the_field(override, message):
    with pytest.raises(ValueError) as e:
        load_config(overrides=override)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "override, field",
    [
        ({"split": {"min_clip_s": 5, "max_clip_s": 2}}, "max_clip_s"),
        ({"motion": {"sample_fps": 0}}, "sample_fps"),
        ({"decide": {"tag_thresholds": {"blurry": 0.3}}}, "blurry"),
        ({"decide": {"rules": [{"column": "motion_score", "min": 1, "min_pct": 5}]}}, "min_pct"),
        ({"extract": {"short_side": 255}}, "short_side"),
        ({"runtime": {"executor": "slurm"}}, "executor"),
    ],
)
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ValueError, match=field):
        load_config(overrides=override)


def test_unknown_profile():
    with pytest.raises(ValueError, match="profile"):
        load_config(profile="huge")


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_file_formats(tmp_path, suffix):
    data = {"split": {"max_clip_s": 6.0}, "decide": {"rules": [{"column": "motion_score", "min_pct": 10}]}}
    f = tmp_path / f"c{suffix}"
    if suffix == ".toml":
        f.write_text('[split]\nmax_clip_s = 6.0\n[[decide.rules]]\ncolumn = "motion_score"\nmin_pct = 10\n')
    elif suffix == ".yaml":
        f.write_text("split:\n  max_clip_s: 6.0\ndecide:\n  rules:\n    - column: motion_score\n      min_pct: 10\n")
    else:
        f.write_text(json.dumps(data))
    cfg = load_config(f)
    assert cfg.split.max_clip_s == 6.0 and cfg.decide.rules[0].min_pct == 10


def test_resolved_config_round_trips():
    cfg = load_config(profile="tiny", overrides={"decide": {"keep_tags": ["over_edited"]}})
    again = from_dict(json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg


def test_readme_example_config_loads(tmp_path):
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):  # every config the README shows loads as written
        (tmp_path / f"readme{i}.toml").write_text(block)
        load_config(tmp_path / f"readme{i}.toml")
    cfg = load_config(tmp_path / f"readme{next(i for i, b in enumerate(blocks) if 'keep_tags' in b)}.toml")
    assert cfg.decide.keep_tags == ("over_edited",)
    assert [r.name for r in cfg.decide.rules] == ["motion_too_low", "motion_top_5pct"]


def test_every_unknown_key_is_named_in_one_line():
    with pytest.raises(ValueError) as e:
        load_config(overrides={"split": {"min_clp_s": 1}, "zz": 1, "decide": {"rules": [{"colum": "x"}]}})
    assert str(e.value) == ("unknown config keys: zz, split.min_clp_s (did you mean split.min_clip_s?), "
                            "decide.rules[0].colum (did you mean decide.rules[0].column?)")


@pytest.mark.parametrize(
    "override, message",
    [
        ({"decide": {"rules": [{"min": 0.1}]}}, "missing config key: decide.rules[0].column"),
        ({"split": 3}, "split must be a table, got 3"),
        ({"decide": {"rules": ["motion_score"]}}, "decide.rules[0] must be a table, got 'motion_score'"),
        ({"shard": {"shuffle_seed": 3.5}}, "shard.shuffle_seed must be an integer, got 3.5"),
        ({"decode": {"threads": True}}, "decode.threads must be an integer, got True"),
    ],
)
def test_missing_keys_and_wrong_shapes_name_the_field(override, message):
    with pytest.raises(ValueError) as e:
        load_config(overrides=override)
    assert str(e.value) == message


def test_a_value_no_config_file_type_maps_to_fails_in_one_line(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[probe]\npath = 2024-01-01\n")  # a TOML date, not a string
    with pytest.raises(ValueError, match=r"^config: datetime\.date\(2024, 1, 1\) is not a config value"):
        load_config(f)


def test_nested_configs_come_back_frozen_with_their_own_validation():
    cfg = load_config(overrides={"judge": {"questions": [{"name": "fast_zoom"}]},
                                 "shard": {"resolutions": [{"width": 256, "height": 128}], "frame_buckets": [33, 17]}})
    assert cfg.judge.questions[0].question  # JudgeQuestion.__post_init__ filled the default wording
    assert cfg.shard.frame_buckets == (17, 33) and cfg.shard.resolutions[0].media == "video"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.shard.bucketing = False  # type: ignore[misc]
