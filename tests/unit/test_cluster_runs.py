"""The control rank's acquisition bookkeeping (ndflow.cluster.runs), in-process with a
stand-in for the control node: what the acquisition ranks' ends add up to."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from ndflow.cluster.runs import Runs
from ndflow.ndarray import Acquisition


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
