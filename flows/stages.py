"""Which stages a run has: the source stages, then the clip-level model stages.

The scoring stream (flows/run_ray.py, flows/run_local.py) is

    sources -> ProbeSources -> SplitAndScore -> [clip stages, in order] -> WriteParts

`SplitAndScore` turns source rows into clip rows (curation/core/schema.py: analyzed_clip_schema)
carrying each clip's RGB frames (curation/core/frames.py). A clip stage is a `curation.core.stage.Stage`
that reads those rows and adds its `writes` columns: register it in `clip_stages` below, built
from its own section of the run config. See NOTES for issue 10/11 in the repository history.
"""

from __future__ import annotations

from curation.analysis.analyze import SplitAndScore
from curation.core.config import RunConfig
from curation.core.frames import TRANSIENT_COLUMNS
from curation.core.manifest import SIDE_COLUMNS
from curation.models.model_scoring import model_stages
from curation.media.probe import ProbeSources
from curation.core.schema import CLIP_COLUMNS
from curation.core.stage import Stage


def clip_stages(cfg: RunConfig) -> list[Stage]:
    """Model stages on clip rows, in run order (aesthetic, CLIP, OCR, captioning, ...).

    Each is built from its config section and returned only when enabled there, so a run
    without models decodes no model frames at all."""
    stages: list[Stage] = []
    stages += model_stages(cfg)  # issue 10: CLIP (aesthetic, zero-shot, embedding), OCR
    return stages


def source_stages(cfg: RunConfig, clip: list[Stage]) -> list[Stage]:
    """Probe and analysis; the analysis samples model frames only when a clip stage reads them."""
    wants_frames = any(set(getattr(s, "reads", ())) & set(TRANSIENT_COLUMNS) for s in clip)
    return [ProbeSources(cfg), SplitAndScore(cfg, frames=wants_frames)]


def check_clip_stages(clip: list[Stage]) -> None:
    """Every column a clip stage writes must be a manifest column (curation/core/schema.py), or the
    manifest writer would drop it; raises ValueError naming the stage."""
    for s in clip:
        unknown = [c for c in s.writes if c not in CLIP_COLUMNS and c not in SIDE_COLUMNS]
        if unknown:
            raise ValueError(f"clip stage {type(s).__name__} writes {unknown}: add them to CLIP_COLUMNS in curation/core/schema.py")
