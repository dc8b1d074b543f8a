"""The CPU stages of the caption stream: extraction, then frame preparation, ahead of the
caption stage's actors (flows/captions.py builds the stream).

* `ExtractForCaptions`: extraction (curation/outputs/extract_clips.py `ExtractClips`, unchanged) of a
  block of sources, each result row given what the caption stage needs to know about its clip
  from the store (captioning/store.py `plan`): its media type, whether there is anything to do
  (`caption_todo`; false for a clip whose extraction failed), the stored caption key and judge
  answers.
* `PrepareFrames`: the clip file decoded at the caption policy (~2 fps, capped count and
  pixels; every window under `policy = windows`) into the transient frame columns, so the
  caption actors (the GPUs) only generate and never wait for a decoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from captioning.caption_clips import FRAMES_FROM, TODO, CaptionConfig
from captioning.frames import read_windows
from curation.outputs.extract_clips import EXTRACT_INPUT, ExtractClips
from curation.core.frames import frame_fields, pack_frames
from curation.media.container import MediaError
from curation.core.schema import JUDGE_TAGS, judge_column
from curation.core.stage import Stage

# Per clip, what the store holds (captioning/store.py `plan`), carried beside EXTRACT_INPUT's clips.
CARRY = pa.struct([("clip_id", pa.string()), (TODO, pa.bool_()), ("caption_key", pa.string()), ("judge_key", pa.string()),
                   *((judge_column(t), pa.float64()) for t in JUDGE_TAGS)])
STREAM_INPUT = pa.schema([*EXTRACT_INPUT, ("carry", pa.list_(CARRY))])
_CARRIED = [f.name for f in CARRY][1:]


class ExtractForCaptions(Stage):
    """Extraction of a block of sources (STREAM_INPUT rows), one row per clip out: the
    extraction's result, the clip's media type and what `carry` says about it."""

    reads = ("source", "media_type", "clips", "carry")
    writes = ("clip_id", "clip_path", "error", "media_type", *_CARRIED)
    batch_size = 1

    def __init__(self, extract: ExtractClips):
        self.extract = extract
        self.num_cpus = extract.num_cpus

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.extract(batch.select(EXTRACT_INPUT.names))
        about = {}
        for media, carry in zip(batch.column("media_type").to_pylist(), batch.column("carry").to_pylist()):
            for c in carry or ():
                about[c["clip_id"]] = (media, c)
        ids, failed = out.column("clip_id").to_pylist(), out.column("error").is_valid().to_pylist()
        rows = [about.get(k, (None, {})) for k in ids]
        out = out.append_column("media_type", pa.array([m for m, _ in rows], pa.string()))
        for f in CARRY:
            if f.name == "clip_id":
                continue
            vals = [c.get(f.name) for _, c in rows]
            if f.name == TODO:  # nothing to caption in a clip that has no file
                vals = [bool(v) and not bad for v, bad in zip(vals, failed)]
            out = out.append_column(f.name, pa.array(vals, f.type))
        return out


class PrepareFrames(Stage):
    """The frames the caption stage will see, decoded from each clip file on a CPU worker:
    the transient frame columns (curation/core/frames.py) with the clip's timing (start_s = 0, its
    frame rate and count) and `frames_from = "clip"`. Rows with nothing to do, or whose file
    cannot be read, pass without frames (the caption stage then reads the file itself and says
    what is wrong with it)."""

    reads = ("clip_id", "clip_path", "media_type")
    writes = ("start_s", "fps", "num_frames", FRAMES_FROM, *(f.name for f in frame_fields()))

    def __init__(self, cfg: CaptionConfig, root: str):
        self.cfg, self.root = cfg, root

    def __call__(self, batch: pa.Table) -> pa.Table:
        c = self.cfg
        win = c.window_frames if c.policy == "windows" else None
        todo = batch.column(TODO).to_pylist() if TODO in batch.column_names else [True] * batch.num_rows
        empty = {"start_s": None, "fps": None, "num_frames": None, FRAMES_FROM: None, "frames": None,
                 "frames_shape": None, "frames_t_s": None}
        rows = []
        for path, media, want in zip(batch.column("clip_path").to_pylist(), batch.column("media_type").to_pylist(), todo):
            if not want or not path or media == "image" or c.frame_source == "pipeline":
                rows.append(empty)
                continue
            try:
                seen = read_windows(Path(self.root) / path, c.fps, c.max_frames, c.max_pixels, win)
            except (MediaError, ValueError):
                rows.append(empty)
                continue
            frames, times = [], []
            for m in seen:
                frames += list(m.frames)
                times += [(m.start_frame + k) / m.source_fps for k in m.frame_indices]
            same = len({f.shape for f in frames}) == 1
            if not same:  # a size change inside the clip: leave it to the caption stage's own reader
                rows.append(empty)
                continue
            total = seen[-1].start_frame + seen[-1].total_frames
            rows.append({"start_s": 0.0, "fps": seen[0].source_fps, "num_frames": total, FRAMES_FROM: "clip",
                         **pack_frames(np.stack(frames), times)})
        got = pa.Table.from_pylist(rows, schema=pa.schema([("start_s", pa.float64()), ("fps", pa.float64()),
                                                           ("num_frames", pa.int64()), (FRAMES_FROM, pa.string()),
                                                           *frame_fields()]))
        for name in got.column_names:
            i = batch.schema.get_field_index(name)
            batch = batch.set_column(i, name, got.column(name)) if i >= 0 else batch.append_column(name, got.column(name))
        return batch
