import numpy as np
import pyarrow as pa
import pytest

from curation.core.frames import drop_transient, frame_fields, pack_frames, unpack_frames


def test_frames_round_trip_and_drop():
    a = np.random.default_rng(0).integers(0, 255, (3, 4, 5, 3), dtype=np.uint8)
    empty = {"frames": None, "frames_shape": None, "frames_t_s": None}
    t = pa.Table.from_pylist([pack_frames(a, [0.0, 0.5, 1.0]), empty], schema=pa.schema(frame_fields()))
    got, times = unpack_frames(t, 0)
    assert got.shape == (3, 4, 5, 3) and (got == a).all() and times == [0.0, 0.5, 1.0]
    assert unpack_frames(t, 1) is None
    assert drop_transient(t).num_columns == 0


def test_pack_frames_refuses_bad_shapes():
    with pytest.raises(ValueError, match="uint8"):
        pack_frames(np.zeros((2, 4, 4), np.uint8), [0, 1])
    with pytest.raises(ValueError, match="timestamps"):
        pack_frames(np.zeros((2, 4, 4, 3), np.uint8), [0])
