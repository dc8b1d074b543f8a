"""Models by hub id, fetched on first use; offline, every missing model named in one line.

The caches are empty folders of the test (huggingface_hub's cache and torch.hub's); nothing here
reaches a hub: the download functions are test doubles recording what they were asked for
(beside tests of the real cache lookups on a cache laid out as huggingface_hub lays it out).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curation.core.config import load_config
from curation.models.hub import MissingModel
from flows.models import prepare_models, run_models

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc
    import torch.hub

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def full_cfg():
    """The default captioner and budget tokenizer, with CLIP scoring on (ViT-B/32, LAION head)."""
    cfg = load_config(profile="cpu")
    return dataclasses.replace(cfg, models=dataclasses.replace(cfg.models, enabled=True),
                               caption=dataclasses.replace(cfg.caption, enabled=True, backend="transformers"))


def test_offline_every_missing_model_is_named_in_one_line_with_its_fetch_command(empty_caches):
    cfg = full_cfg()
    with pytest.raises(MissingModel) as e:
        prepare_models(cfg)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("4 model(s) missing, offline")
    assert f"caption.model {cfg.caption.model} (`hf download {cfg.caption.model}`)" in msg
    # the budget needs T5's tokenizer files, never CogVideoX-2b's 2B weights
    assert "caption.budget_tokenizer THUDM/CogVideoX-2b (tokenizer only) (`hf download THUDM/CogVideoX-2b --include 'tokenizer/*'" in msg
    assert "`hf download THUDM/CogVideoX-2b`" not in msg
    assert "models.clip ViT-B-32-quickgelu/openai (`hf download timm/vit_base_patch32_clip_224.openai open_clip_model.safetensors`)" in msg
    assert "models.aesthetic_head sa_0_4_vit_b_32_linear.pth (`curl -L" in msg and "LAION-AI/aesthetic-predictor/raw/" in msg
    assert "videomill fetch" in msg


class FakeHub:
    """Test double of huggingface_hub's and torch.hub's downloads: writes what a real download
    would leave in the cache, and records the calls."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []
        self.snapshots: dict[tuple, Path] = {}

    def snapshot_download(self, repo, allow_patterns=None, local_files_only=False, **kw):
        key = (repo, tuple(allow_patterns or ()))
        if local_files_only:
            if key not in self.snapshots:
                from huggingface_hub.errors import LocalEntryNotFoundError

                raise LocalEntryNotFoundError(f"{repo} not cached")
            return str(self.snapshots[key])
        self.calls.append(("snapshot", repo, allow_patterns))
        d = self.root / "snap" / repo.replace("/", "--") / str(len(self.snapshots))
        files = ["tokenizer/spiece.model"] if allow_patterns else ["config.json", "model.safetensors"]
        for f in files:
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            (d / f).write_bytes(b"x")
        self.snapshots[key] = d
        return str(d)

    def hf_hub_download(self, repo, filename, **kw):
        self.calls.append(("file", repo, filename))
        p = self.root / "files" / repo.replace("/", "--") / filename
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        return str(p)

    def try_to_load_from_cache(self, repo, filename, **kw):
        p = self.root / "files" / repo.replace("/", "--") / filename
        return str(p) if p.exists() else None

    def download_url_to_file(self, url, dst, hash_prefix=None, progress=True):
        self.calls.append(("url", url, hash_prefix, progress))
        Path(dst).write_bytes(b"x")


def test_online_missing_models_are_fetched_once_each_and_sizes_are_said_first(empty_caches, monkeypatch):
    import huggingface_hub
    import torch.hub

    fake = FakeHub(empty_caches)
    for name in ("snapshot_download", "hf_hub_download", "try_to_load_from_cache"):
        monkeypatch.setattr(huggingface_hub, name, getattr(fake, name))
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake.download_url_to_file)

    class Entry:
        def __init__(self, path, size):
            self.path, self.size = path, size

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", lambda self, repo, recursive=True: [
        Entry("model.safetensors", 1_015_000_000), Entry("config.json", 2_000), Entry("tokenizer/spiece.model", 791_656)])
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("flows.models.unreachable", lambda models: None)  # the hosts "answer"
    said: list[str] = []
    paths = prepare_models(full_cfg(), say=said.append)
    assert len(paths) == 4 and all(Path(p).exists() for p in paths)
    kinds = sorted(c[:2] for c in fake.calls)
    assert kinds == [("file", "timm/vit_base_patch32_clip_224.openai"), ("snapshot", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"),
                     ("snapshot", "THUDM/CogVideoX-2b"), ("url", "https://github.com/LAION-AI/aesthetic-predictor/raw/"
                                                                 "6d122adad522ab246644d9dc1c6d7a3810ee255f/sa_0_4_vit_b_32_linear.pth")]
    (tok,) = [c for c in fake.calls if c[1] == "THUDM/CogVideoX-2b"]
    assert "tokenizer/*" in tok[2] and "*.safetensors" not in tok[2]
    (url,) = [c for c in fake.calls if c[0] == "url"]
    assert url[2].startswith("c7b14cead230") and url[3] is True  # pinned sha256, a progress bar
    assert "model caption.model: HuggingFaceTB/SmolVLM2-500M-Video-Instruct: to fetch, 1.0 GB" in said, said
    fake.calls.clear()
    assert prepare_models(full_cfg(), say=said.append) == paths and fake.calls == []  # cached now: nothing fetched


def test_a_real_hub_cache_is_found_offline(empty_caches):
    """The real huggingface_hub lookups on a cache laid out as huggingface_hub writes it."""
    cache = Path(empty_caches / "hf")
    commit = "0" * 40

    def put(repo, files):
        base = cache / f"models--{repo.replace('/', '--')}"
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / "main").write_text(commit)
        for f in files:
            p = base / "snapshots" / commit / f
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")

    cfg = full_cfg()
    put("THUDM/CogVideoX-2b", ["tokenizer/spiece.model", "tokenizer/tokenizer_config.json"])
    put("timm/vit_base_patch32_clip_224.openai", ["open_clip_model.safetensors"])
    with pytest.raises(MissingModel) as e:
        prepare_models(cfg)
    assert str(e.value).startswith("2 model(s) missing")  # the captioner and the head; tokenizer and CLIP found
    # a tokenizer-only snapshot of a repo does not pass for the whole model
    tok_only = dataclasses.replace(cfg, caption=dataclasses.replace(cfg.caption, model="THUDM/CogVideoX-2b"),
                                   models=dataclasses.replace(cfg.models, enabled=False))
    with pytest.raises(MissingModel, match="caption.model THUDM/CogVideoX-2b "):
        prepare_models(tok_only)


def test_tiny_and_local_models_need_nothing_fetched(tmp_path):
    assert run_models(load_config(profile="tiny")) == []
    cfg = load_config(profile="tiny", overrides={"caption": {"model": str(tmp_path)}})
    (m,) = run_models(cfg)
    assert m.kind == "local" and m.cached() == str(tmp_path)


def _videomill(*args, env_extra=None, timeout=300):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)


def test_cli_offline_run_with_missing_models_stops_in_one_line_before_any_service(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes(b"")  # a file named in a folder: an input (the run would make it an error row)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[models]\nenabled = true\n")
    env = {"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_OFFLINE": "0"}
    p = _videomill("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--config", str(cfg),
                            "--offline", env_extra=env)
    assert p.returncode == 2, p.stderr
    errors = [line for line in p.stderr.splitlines() if "configuration error" in line]
    assert len(errors) == 1 and "model(s) missing, offline" in errors[0] and "hf download" in errors[0]
    assert "Traceback" not in p.stderr and "prefect" not in p.stderr.lower() and not (tmp_path / "out").exists()


def test_cli_fetch_with_nothing_to_fetch(tmp_path):
    p = _videomill("fetch", "--profile", "tiny")
    assert p.returncode == 0 and "every model of this configuration is in the local caches" in p.stdout


def test_online_but_the_hub_does_not_answer_is_one_line_in_seconds(empty_caches, monkeypatch):
    """No network and no HF_HUB_OFFLINE: huggingface_hub would retry for minutes; one short
    request per host says so first (a closed local port stands in for the hub)."""
    import socket

    import huggingface_hub.constants as hc

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(hc, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cfg = full_cfg()
    cfg = dataclasses.replace(cfg, models=dataclasses.replace(cfg.models, enabled=False))
    with pytest.raises(MissingModel) as e:
        prepare_models(cfg)
    msg = str(e.value)
    assert "\n" not in msg and f"127.0.0.1:{port} does not answer (ConnectError)" in msg
    assert "hf download HuggingFaceTB/SmolVLM2-500M-Video-Instruct" in msg
