"""Models by hub id or URL, fetched on first use, as transformers, open_clip and diffusers do.

A `Model` is one set of weights a run uses, named the way its config names it: a Hugging Face
repo id (``HuggingFaceTB/SmolVLM2-500M-Video-Instruct``), the tokenizer of one
(``THUDM/CogVideoX-2b``: its ``tokenizer/`` folder only, never the 2B model's weights), an
open_clip tag (``ViT-B-32-quickgelu`` / ``openai``: its Hugging Face file) or a file behind a
URL (the LAION aesthetic heads live in GitHub repositories). ``fetch()`` returns the local
path, downloading it into the usual cache when it is not there yet (huggingface_hub's own
download and progress bars; URL files through ``torch.hub.download_url_to_file`` into
``$TORCH_HOME/hub/checkpoints``, checked against a pinned sha256).

Offline (``HF_HUB_OFFLINE=1``, or ``videomill run --offline``, which sets it) nothing is
downloaded: a model missing from the cache raises `MissingModel`, and `missing_line` puts
every missing model of a run in one line with the exact command that fetches it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("videomill")

# Tokenizer files of a repo (its root, or a diffusers pipeline's tokenizer/ subfolder): what the
# caption budget needs from the trainer's text encoder, without the model weights.
TOKENIZER_FILES = ("tokenizer/*", "tokenizer*", "special_tokens_map.json", "spiece.model", "*.tiktoken",
                   "vocab.*", "merges.txt", "added_tokens.json")


class MissingModel(ValueError):
    """A model is neither a local path nor in the cache, and it may not (or could not) be fetched.
    The message is one line and says how to get it."""


def offline() -> bool:
    """True when downloads are off: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set true."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def human_size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@dataclass(frozen=True)
class Model:
    """One model of a run. key: the config field that names it (``caption.model``).

    kind: ``hf`` (a repo snapshot, `allow` patterns or all), ``hf-file`` (one file of a repo),
    ``url`` (a file behind `url`, pinned by `sha256`) or ``local`` (a path; never fetched)."""

    key: str
    name: str
    kind: str
    repo: str = ""
    allow: tuple[str, ...] | None = None
    files: tuple[str, ...] = ()  # hf-file: candidates in order of preference (open_clip: safetensors, then .bin)
    url: str = ""
    sha256: str = ""
    filename: str = ""

    # ---- where it is
    def cached(self) -> str | None:
        """The local path when the model is already here (no network), else None."""
        if self.kind == "local":
            return self.name if Path(self.name).expanduser().exists() else None
        if self.kind == "url":
            p = url_cache_dir() / self.filename
            return str(p) if p.is_file() else None
        from huggingface_hub import snapshot_download, try_to_load_from_cache

        if self.kind == "hf-file":
            for f in self.files:
                got = try_to_load_from_cache(self.repo, f)
                if isinstance(got, str):
                    return got
            return None
        try:
            path = snapshot_download(self.repo, allow_patterns=list(self.allow) if self.allow else None, local_files_only=True)
        except (OSError, ValueError):  # LocalEntryNotFoundError (an OSError), or not a valid repo id
            return None
        # A cached snapshot of the repo is not proof of these files: an earlier tokenizer-only
        # fetch of the same repo caches its ref too. Ask for what the loader will open.
        return path if _complete(Path(path), self.allow) else None

    def fetch(self) -> str:
        """The local path, downloaded first when missing (MissingModel offline or on failure)."""
        got = self.cached()
        if got is not None:
            return got
        if self.kind == "local":
            raise MissingModel(f"{self.key}: {self.name!r} does not exist")
        if offline():
            raise MissingModel(missing_line([self]))
        log.info("fetching %s (%s) for %s", self.label(), human_size(self.size()), self.key)
        try:
            return self._download()
        except MissingModel:
            raise
        except Exception as e:  # network, auth, a repo that does not exist: one line (how to get it)
            raise MissingModel(f"{self.key}: could not fetch {self.label()} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                               f"fetch it with `{self.command()}` or give a local path") from None

    def _download(self) -> str:
        if self.kind == "url":
            import torch.hub

            dst = url_cache_dir() / self.filename
            dst.parent.mkdir(parents=True, exist_ok=True)
            # download_url_to_file writes a temporary file, checks the hash prefix, then moves it
            # into place: a crash or a corrupt download never leaves a file that looks complete.
            torch.hub.download_url_to_file(self.url, str(dst), hash_prefix=self.sha256 or None, progress=True)
            return str(dst)
        from huggingface_hub import hf_hub_download, snapshot_download

        if self.kind == "hf-file":
            err: Exception | None = None
            for f in self.files:
                try:
                    return hf_hub_download(self.repo, f)
                except Exception as e:  # the next candidate (open_clip repos hold .safetensors, .bin or both)
                    err = e
            raise err or MissingModel(f"{self.key}: no file of {self.repo}")
        return snapshot_download(self.repo, allow_patterns=list(self.allow) if self.allow else None)

    # ---- what to tell a person
    def label(self) -> str:
        if self.kind == "hf" and self.allow == TOKENIZER_FILES:
            return f"{self.repo} (tokenizer only)"
        return self.name

    def command(self) -> str:
        """The exact shell command that puts this model where `fetch` finds it."""
        if self.kind == "url":
            return f"curl -L --create-dirs -o {url_cache_dir() / self.filename} '{self.url}'"
        if self.kind == "hf-file":
            return f"hf download {self.repo} {self.files[0]}"
        if self.allow:
            return f"hf download {self.repo} " + " ".join(f"--include '{p}'" for p in self.allow)
        return f"hf download {self.repo}"

    def size(self) -> int | None:
        """Download size in bytes from the hub's metadata (None offline, for URLs, or on error)."""
        if offline() or self.kind not in ("hf", "hf-file"):
            return None
        from fnmatch import fnmatch

        try:
            from huggingface_hub import HfApi

            files = HfApi().list_repo_tree(self.repo, recursive=True)
            sizes = {f.path: getattr(f, "size", 0) or 0 for f in files}
            if self.kind == "hf-file":
                return next((sizes[f] for f in self.files if f in sizes), None)
            return sum(s for p, s in sizes.items() if not self.allow or any(fnmatch(p, a) for a in self.allow))
        except Exception:  # sizes are a courtesy; the download itself reports real errors
            return None


def _complete(path: Path, allow: tuple[str, ...] | None) -> bool:
    from fnmatch import fnmatch

    names = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    if allow:
        return any(fnmatch(n, a) for n in names for a in allow)
    configs = {"config.json", "model_index.json"} & names
    return bool(configs) and any(n.endswith((".safetensors", ".bin")) for n in names)


def url_cache_dir() -> Path:
    """Where URL weights go: torch.hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_model(key: str, name: str, tokenizer_only: bool = False) -> Model:
    """A model named by a hub id or a local folder."""
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return Model(key, str(Path(name).expanduser()), "local")
    return Model(key, name, "hf", repo=name, allow=TOKENIZER_FILES if tokenizer_only else None)


def unreachable(models: list[Model], timeout_s: float = 5.0) -> str | None:
    """Why the hosts `models` download from do not answer (one line), or None when they do.

    One short request per host before any download: huggingface_hub retries an unreachable
    hub for minutes before it gives up, which a user without network should not wait for."""
    import httpx
    from huggingface_hub import constants

    hosts = set()
    for m in models:
        if m.kind in ("hf", "hf-file"):
            hosts.add(constants.ENDPOINT)
        elif m.kind == "url":
            hosts.add("/".join(m.url.split("/")[:3]))
    for host in sorted(hosts):
        try:
            httpx.head(host, timeout=timeout_s)
        except httpx.HTTPError as e:
            return f"{host} does not answer ({type(e).__name__})"
    return None


def missing_line(models: list[Model], why: str | None = None) -> str:
    """One line naming every model in `models` with the command that fetches each."""
    parts = [f"{m.key} {m.label()} (`{m.command()}`)" for m in models]
    why = why or ("offline (HF_HUB_OFFLINE=1)" if offline() else "not fetched")
    return f"{len(models)} model(s) missing, {why}: " + "; ".join(parts) + \
        ". With network access, `videomill fetch` (same --profile/--config) fetches them all"
