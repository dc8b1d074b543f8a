"""What a command checks before Prefect or Ray start: every configuration-type problem.

A bad key or value, an input that matches nothing, inputs holding no media at all, an `--out`
that cannot be a run folder, a run folder without a manifest, scoring settings that conflict
with the scores already in OUT, a Prefect API that is set but does not answer: each is one
`ConfigError` line, found in seconds by the CLI (exit 2), never a traceback from inside a flow
run. The flows call the same functions (a Prefect deployment has no CLI in front of it).

This module imports neither Prefect (~10 s to import) nor Ray.
"""

from __future__ import annotations

import json
import os
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

from curation.core.config import RunConfig, load_config, load_config_over, to_dict
from curation.media.inputs import MEDIA_EXTS, expand_inputs, is_url
from curation.core.manifest import Layout, fingerprint


class ConfigError(ValueError):
    """Bad configuration or arguments: the run stops before doing any work."""


def run_config(config: str | None, profile: str | None, overrides: dict | None = None) -> RunConfig:
    try:
        return load_config(config, profile, overrides)
    except (ValueError, OSError) as e:
        raise ConfigError(str(e)) from None


def check_inputs(inputs: list[str]) -> list[str]:
    """The sources `inputs` name; ConfigError when one matches nothing or none is media."""
    try:
        sources = expand_inputs(list(inputs))
    except (ValueError, OSError) as e:
        raise ConfigError(str(e)) from None
    if not sources:
        exts = " ".join(sorted(MEDIA_EXTS)[:8])
        raise ConfigError(f"no media files in {' '.join(inputs)} (folders and globs keep files named {exts} ...: "
                          "see curation/media/inputs.py); nothing to curate")
    return sources


def check_out(out: str, inputs: list[str] = ()) -> Layout:
    """`out` can be a run folder: a folder (or creatable as one), writable, not inside an input
    folder (its clips would be inputs of the next run)."""
    layout = Layout.at(out)
    root = layout.root
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    parent = root
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: cannot write in {parent}")
    for item in inputs:
        if is_url(item) or item.startswith("@"):
            continue
        folder = Path(item).expanduser()
        if folder.is_dir() and (root == folder.resolve() or folder.resolve() in root.parents):
            raise ConfigError(f"--out {out} is inside the input folder {item}: its clips would be inputs of the "
                              "next run; put OUT elsewhere")
    return layout


def existing_run(out: str) -> Layout:
    """The run folder of `decide`, `shard`, `report`: ConfigError unless `videomill run` made it."""
    layout = Layout.at(out)
    if not layout.root.is_dir():
        raise ConfigError(f"{out}: no such folder (make it with `videomill run INPUT --out {out}`)")
    if not layout.sources.exists():
        raise ConfigError(f"{out} has no manifest; run `videomill run INPUT --out {out}` first")
    return layout


def config_for_out(out: str, config: str | None, profile: str | None, overrides: dict | None = None) -> tuple[Layout, RunConfig]:
    """The config of a step on an existing OUT: the settings OUT was made with
    (config.resolved.json), then `profile`, the file and `overrides` on top."""
    layout = existing_run(out)
    try:
        if layout.resolved_config.exists():
            base = json.loads(layout.resolved_config.read_text())
            return layout, load_config_over(base, config, profile, overrides)
        return layout, load_config(config, profile, overrides)  # a run from before config.resolved.json
    except (ValueError, OSError) as e:
        raise ConfigError(str(e)) from None


# Config sections that never change a score: decisions, shards and where things run; and
# captions, made after decide and keyed by their own hash (OUT/captions/<caption_key>/);
# dedup and probe too: global steps before decide, recomputed from the stored embeddings;
# the judge too: VLM answers after decide, in their own store (OUT/judge/<judge_key>/).
NOT_SCORING = ("profile", "decide", "shard", "runtime", "caption", "judge", "dedup", "probe")


def scoring_fingerprint(cfg: RunConfig) -> str:
    """Hash of everything a stored score depends on: every scoring config section (model
    ids included) and the code `version` of every stage of the stream."""
    from flows.stages import clip_stages, source_stages

    d = to_dict(cfg)
    clip = clip_stages(cfg)
    stages = {type(st).__qualname__: str(getattr(st, "version", "1")) for st in (*source_stages(cfg, clip), *clip)}
    return fingerprint({"config": {k: v for k, v in d.items() if k not in NOT_SCORING}, "stages": stages})


def scores_conflict(layout: Layout, cfg: RunConfig) -> bool:
    """True when OUT holds scores made with other scoring settings or scorer versions."""
    f = layout.fingerprint_file
    return f.exists() and f.read_text().strip() != scoring_fingerprint(cfg)


CONFLICT = ("{root} holds scores made with different scoring settings or scorer versions "
            "(decode/split/motion/tags/frames/extract or a model stage); {fix}")


# What `decide` and `shard` say when their settings would change scores.
ONLY_AFTER_SCORING = ("decide and shard change only what comes after scoring ([decide], [dedup], [probe], [caption], "
                      "[shard], [runtime]); to change scoring settings, `videomill run ... --rescore`")


def check_scores(layout: Layout, cfg: RunConfig, rescore: bool = False, fix: str | None = None) -> None:
    if not rescore and scores_conflict(layout, cfg):
        raise ConfigError(CONFLICT.format(root=layout.root, fix=fix or "use a new --out, or --rescore to discard them"))


def prefect_api_url() -> tuple[str | None, str]:
    """(PREFECT_API_URL as Prefect will read it, where it is set): the environment first, then
    the active profile of Prefect's profiles file. (None, "") when unset: the embedded server."""
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if url:
        return url, "the environment"
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None, ""
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    url = str((data.get("profiles", {}).get(active) or {}).get("PREFECT_API_URL") or "").strip()
    return (url, f"Prefect profile {active!r} ({path})") if url else (None, "")


def check_prefect_api(timeout_s: float = 3.0) -> None:
    """ConfigError when PREFECT_API_URL names a server that does not answer (a stopped
    `prefect server start`): without it every run would fail later with a long traceback."""
    url, where = prefect_api_url()
    if not url:
        return
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s) as r:
            r.read(64)
    except (urllib.error.URLError, OSError, ValueError) as e:
        undo = ("`unset PREFECT_API_URL`" if where == "the environment"
                else "`prefect config unset PREFECT_API_URL`")
        reason = getattr(e, "reason", None) or e
        raise ConfigError(f"PREFECT_API_URL={url} (set in {where}) does not answer ({reason}): start that server, "
                          f"or {undo} to run on videomill's own temporary server") from None
