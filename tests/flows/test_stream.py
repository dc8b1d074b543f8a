"""The one streaming scoring pipeline on Ray: model stages set up once per actor per run,
and per-item fault isolation (poison inputs become one error row each; the run completes)."""

from __future__ import annotations

import os
import struct
import sys
import uuid
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from ray import cloudpickle

from curation.analysis.analyze import SplitAndScore
from curation.core.config import load_config
from curation.core.frames import unpack_frames
from curation.core.manifest import Layout, committed_parts, read_scores, read_sources
from curation.media.probe import ProbeSources
from curation.core.stage import Stage
from flows import bookkeeping, curate as curate_mod

pytestmark = pytest.mark.slow
# The stages below travel to Ray workers by value (this test module is not importable there).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class CountSetups(Stage):
    """A stateful clip stage that records each setup() and, per batch, which actor served it
    and how many model frames it saw (files in `where`)."""

    reads = ("clip_id", "frames", "frames_shape", "frames_t_s")
    writes = ()
    stateful = True
    num_cpus = 0.5
    batch_size = 2

    def __init__(self, where: str):
        self.where = where
        self.token: str | None = None

    def setup(self) -> None:
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        Path(self.where, f"setup-{self.token}").touch()

    def __call__(self, batch: pa.Table) -> pa.Table:
        frames = [unpack_frames(batch, i) for i in range(batch.num_rows)]
        assert all(f is not None and f[0].shape[0] >= 1 for f in frames), "a clip row without frames"
        Path(self.where, f"call-{self.token}-{uuid.uuid4().hex[:8]}").write_text(str(batch.num_rows))
        return batch


class OddProbe(ProbeSources):
    """The real probe, except that a file named `name` makes it raise an exception type no
    probe code expects (a library bug, say)."""

    def __init__(self, cfg, name: str):
        super().__init__(cfg)
        self.name = name

    def probe_file(self, uri, decode):
        if uri.endswith(self.name):
            raise KeyError("codec_tag")
        return super().probe_file(uri, decode)


class KillWorkerOn(Stage):
    """Kills its worker process (no exception, no cleanup) when a row comes from `name`."""

    reads = ("source",)

    def __init__(self, name: str):
        self.name = name

    def __call__(self, batch: pa.Table) -> pa.Table:
        if any(s.endswith(self.name) for s in batch.column("source").to_pylist()):
            os._exit(1)
        return batch


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, extra: bytes = b"") -> bytes:
    """A valid 1-bit greyscale PNG of any size (all black compresses to almost nothing)."""
    raw = b"".join(b"\0" * (1 + (width + 7) // 8) for _ in range(height))
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + extra + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def test_model_stage_sets_up_once_per_actor_across_many_parts(corpus, tmp_path, ray_local, monkeypatch):
    root, expect = corpus
    sources = sorted(str(root / n) for n in expect)
    where = tmp_path / "calls"
    where.mkdir()
    stage = CountSetups(str(where))
    monkeypatch.setattr(curate_mod, "clip_stages", lambda cfg: [stage])
    cfg = load_config(profile="tiny", overrides={"runtime": {"partition_size": 1}})
    layout = Layout.at(tmp_path / "out")
    layout.make()
    curate_mod.score_sources(sources, layout, cfg)
    setups = {p.name.removeprefix("setup-") for p in where.glob("setup-*")}
    calls = list(where.glob("call-*"))
    served = {p.name.removeprefix("call-").rsplit("-", 1)[0] for p in calls}
    clips = read_scores(layout).num_rows
    assert sum(int(p.read_text()) for p in calls) == clips > 4  # every clip went through the stage
    assert served <= setups and len(setups) <= 4  # pool: 2 CPUs / 0.5 CPU per actor
    assert len(setups) == len(served), (setups, served)  # one setup per actor that served
    assert len(committed_parts(layout)) > len(setups)  # many parts, still one setup per actor
    assert read_sources(layout).num_rows == len(sources)


def test_poison_inputs_become_one_error_row_each(corpus, tmp_path, ray_local, monkeypatch):
    root, expect = corpus
    good = sorted(str(root / n) for n, w in expect.items() if w["status"] == "ok" and n.endswith(".mp4"))[:2]
    assert len(good) == 2
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "bomb.png").write_bytes(_png(15000, 15000))  # 225 Mpx: PIL raises DecompressionBombError
    # A compressed text chunk inflating past PIL's limit: its probe raises ValueError.
    (bad / "text_bomb.png").write_bytes(_png(8, 8, _chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * (4 << 20), 9))))
    killer, odd = bad / "killer.mp4", bad / "odd.mp4"
    killer.write_bytes(Path(good[0]).read_bytes())  # a good video, but its worker dies on it
    odd.write_bytes(Path(good[1]).read_bytes())  # a good video, but its probe raises KeyError
    sources = [*good, str(bad / "bomb.png"), str(bad / "text_bomb.png"), str(killer), str(odd)]
    cfg = load_config(profile="tiny", overrides={"runtime": {"partition_size": 2}})
    layout = Layout.at(tmp_path / "out")
    layout.make()
    monkeypatch.setattr(curate_mod, "source_stages", lambda cfg, clip: [OddProbe(cfg, "odd.mp4"), SplitAndScore(cfg, frames=False)])
    monkeypatch.setattr(bookkeeping, "WORKER_RETRIES", 1)  # each try restarts a worker: keep the test short
    result = curate_mod.score_sources(sources, layout, cfg, extra_source_stages=[KillWorkerOn("killer.mp4")])
    rows = {Path(r["source"]).name: r for r in read_sources(layout).to_pylist()}
    assert sorted(rows) == sorted(Path(s).name for s in sources)  # exactly one row per input
    assert [rows[Path(g).name]["status"] for g in good] == ["ok", "ok"]
    bomb, text, dead, strange = rows["bomb.png"], rows["text_bomb.png"], rows["killer.mp4"], rows["odd.mp4"]
    # Refused from its header ([decode] max_pixels), or by PIL's DecompressionBombError.
    assert bomb["status"] == "error" and bomb["error_code"] in ("too_large", "exception"), bomb
    assert text["status"] == "error" and text["error_code"] in ("not_media", "exception"), text  # PIL raises ValueError
    assert strange["status"] == "error" and strange["error_code"] == "exception" and strange["error"] == "KeyError: 'codec_tag'"
    assert "probe_file" in strange["error_detail"]  # the traceback, for whoever debugs it
    assert dead["status"] == "error" and dead["error_code"] == "worker_died" and result["worker_died"] == 1
    scores = read_scores(layout)
    assert pc.all(pc.is_in(scores.column("source"), pa.array(good))).as_py()  # no clip of a dead item
    assert scores.num_rows == len(set(scores.column("clip_id").to_pylist()))


class KillOrEcho(Stage):
    """Passes its rows on; kills its worker (no exception, no cleanup) on the row `name`."""

    reads = ("source",)

    def __init__(self, name: str):
        self.name = name

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.name in batch.column("source").to_pylist():
            os._exit(1)
        return batch


def test_run_ray_reads_every_row_once_and_drops_a_block_whose_worker_dies(ray_local):
    # run_ray carries extraction (a row per source) and captioning: its blocks come from one
    # object-store copy of the table (flows/run_ray.py TableBlocks); a row that kills its
    # worker loses its block after the retries instead of retrying forever or failing the
    # run, and the caller marks the missing rows (join_extraction: worker_died).
    from flows.run_ray import run_ray, sources_per_block

    table = pa.table({"source": [f"s{i:03d}" for i in range(103)]})
    out = run_ray([KillOrEcho("none")], table)
    assert sorted(out.column("source").to_pylist()) == table.column("source").to_pylist()

    k = sources_per_block(103)
    out = run_ray([KillOrEcho("s050")], table, max_retries=1)
    got = set(out.column("source").to_pylist())
    lost = set(table.column("source").to_pylist()) - got
    assert "s050" in lost and len(lost) <= k  # only the dead row's block
    assert out.num_rows == len(got)  # no row twice


def test_what_ray_workers_unpickle_does_not_import_prefect():
    """A Ray actor process unpickles its stage adapter (a class made in flows/run_ray.py),
    which imports that module in the worker: it must not pull Prefect in (unpickling the
    adapter in a fresh interpreter with Ray loaded took 5.9 s with Prefect, 3.2 s without)."""
    import subprocess

    from flows import run_ray

    stage = SplitAndScore(load_config(profile="tiny"))
    code = ("import sys; from ray import cloudpickle; [cloudpickle.loads(sys.stdin.buffer.read(n)) for n in map(int, sys.argv[1:])]; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'flows'}))")
    parts = [cloudpickle.dumps(run_ray._actor_class(stage)), cloudpickle.dumps(run_ray._task_fn(stage))]
    p = subprocess.run([sys.executable, "-c", code, *map(str, map(len, parts))], input=b"".join(parts), capture_output=True,
                       cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    assert p.stdout.decode().strip() == "['flows']"  # flows.run_ray was imported, Prefect was not
