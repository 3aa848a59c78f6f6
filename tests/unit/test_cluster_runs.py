"""Acquisitions' bookkeeping, in-process with stand-ins: what the acquisition ranks' ends add
up to on the control rank (ndflow.cluster.runs), and a processing rank's acquisition once it
drained (ndflow.cluster.processing)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from ndflow.cluster.processing import ProcessingRole
from ndflow.cluster.runs import Runs
from ndflow.ndarray import Acquisition, MissingCause, NDArray


@pytest.mark.parametrize("shared,frames", [(True, 11), (False, 6)])
def test_the_acquisition_counts_the_frames_the_ranks_made(shared, frames):
    """Sharing whole frames, ranks 1 and 2 made 6 and 5 of them: 11 (a second ACQ_DONE of a
    rank adds nothing); modules, each rank made every frame: 6."""
    node = SimpleNamespace(lock=threading.Lock(), cluster=SimpleNamespace(shared=shared))
    runs = Runs(node)  # type: ignore[arg-type]
    acquisition = Acquisition(7, {})
    runs.known[7] = acquisition
    runs._acquired[7] = set()
    runs.on_acq_done(1, {"acq": 7, "frames": 6, "last": 11})
    runs.on_acq_done(2, {"acq": 7, "frames": 5, "last": 10})
    runs.on_acq_done(2, {"acq": 7, "frames": 5, "last": 10})
    assert acquisition.frames == frames
    assert runs._acquired[7] == {1, 2} and runs._highest[7] == 11


def test_a_missing_row_settled_after_a_processing_rank_drained_does_not_reopen_it():
    """A uniqueId no rank made (a stop) is settled once every rank ended: its placeholder
    reaches a processing rank that drained the acquisition already. It goes to the plugins
    (its row), and the acquisition is not held open again (nothing would end it)."""
    emitted: list = []
    drained: list[int] = []
    role = ProcessingRole(SimpleNamespace(emit=emitted.append, pool=None),  # type: ignore
                          [3], 3, drained.append)
    role.start()
    try:
        frame = NDArray.missing(MissingCause.DROPPED, "a frame")
        frame.stamp(1)
        role.local({"acq": 5, "params": {}}, frame)
        role.local(None, 5)  # its end
        deadline = time.monotonic() + 5
        while not drained and time.monotonic() < deadline:
            time.sleep(0.01)
        assert drained == [5]
        late = NDArray.missing(MissingCause.DROPPED, "acquisition stopped")
        late.stamp(2)
        role.local({"acq": 5, "gone": True}, late)
        while len(emitted) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [f.unique_id for f in emitted] == [1, 2]
        assert 5 not in role._acqs
    finally:
        role.stop()
