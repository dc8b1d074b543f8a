"""The models a run uses: named at start, fetched on first use, refused in one line offline.

`prepare_models` runs in the driver before any work (the CLI calls it before Prefect or Ray
start; the flows call it again, which costs a cache lookup): it logs every model with where
it comes from, and downloads the missing ones with huggingface_hub's progress bars (or raises
`MissingModel` naming every missing model and its fetch command, when offline);
`check_services` checks that the openai backend's server answers. Workers load from the same caches; a worker on
another machine fetches what its own cache lacks, as transformers would.
"""

from __future__ import annotations

import logging

from curation.core.config import RunConfig
from curation.models.hub import MissingModel, Model, human_size, missing_line, offline, unreachable

log = logging.getLogger("videomill")
_READY: set[tuple] = set()  # model sets already prepared in this process: listed once


def run_models(cfg: RunConfig, scoring: bool = True, captions: bool = True) -> list[Model]:
    """Every model `cfg` loads: (with `scoring`) model scoring's CLIP and aesthetic head, and
    (with `captions`) the caption VLM, summary LLM and budget tokenizer."""
    from curation.models.clip_models import ModelNotFound, models

    try:
        out = models(cfg.models) if scoring else []
    except ModelNotFound as e:
        raise MissingModel(str(e)) from None
    if captions and cfg.caption.enabled:
        from captioning.backends import caption_models

        out += caption_models(cfg.caption)
    return out


def prepare_models(cfg: RunConfig, scoring: bool = True, captions: bool = True, say=None) -> list[str]:
    """Fetch what is missing (online) or raise MissingModel listing all of it (offline).
    -> the local path of each model, in `run_models` order. `say`: where the listing goes."""
    say = say or log.info
    wanted = run_models(cfg, scoring, captions)
    key = tuple(wanted)
    have = {m: m.cached() for m in wanted}
    missing = [m for m, p in have.items() if p is None]
    if missing and offline():
        raise MissingModel(missing_line(missing))
    if missing and (why := unreachable(missing)):
        raise MissingModel(missing_line(missing, why))
    if key not in _READY:
        for m in wanted:
            where = f"cached ({have[m]})" if have[m] else f"to fetch, {human_size(m.size())}"
            say(f"model {m.key}: {m.label()}: {where}")
    paths = [have[m] or m.fetch() for m in wanted]
    _READY.add(key)
    return paths


def check_services(cfg: RunConfig) -> None:
    """MissingModel (one line) when the caption server of the openai backend does not answer."""
    if cfg.caption.enabled:
        from captioning.backends import check_server

        check_server(cfg.caption)
