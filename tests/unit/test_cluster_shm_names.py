"""MPICH's shared-memory names (ndflow.cluster.shm_names): only MPICH's segments that this
process maps and that still have a name are removed, never another file of /dev/shm."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ndflow.cluster.shm_names import mapped_segments, unlink_mapped

MAPS = """\
55d0c0a00000-55d0c0a21000 r--p 00000000 fd:00 1234    /usr/bin/python3.11
7f0000000000-7f0000510000 rw-s 00000000 00:19 77      /dev/shm/mpich_shm_1a2b3c4d_0
7f0000600000-7f0000610000 rw-s 00510000 00:19 77      /dev/shm/mpich_shm_1a2b3c4d_0
7f0000700000-7f0000800000 rw-s 00000000 00:19 78      /dev/shm/mpich_vci_1a2b3c4d_0
7f0000900000-7f0000a00000 rw-s 00000000 00:19 79      /dev/shm/mpich_shm_99_0 (deleted)
7f0000b00000-7f0000c00000 rw-s 00000000 00:19 80      /dev/shm/ndflow_frames_12
7f0000d00000-7f0000e00000 rw-s 00000000 00:19 81      /dev/shm/psm_mpich_shm_1
7f0000f00000-7f0001000000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0       [stack]
"""


def test_only_mpich_segments_still_named_are_found_once_each():
    assert mapped_segments(MAPS) == ["/dev/shm/mpich_shm_1a2b3c4d_0",
                                     "/dev/shm/mpich_vci_1a2b3c4d_0"]


def test_an_empty_or_anonymous_map_finds_nothing():
    assert mapped_segments("") == []
    assert mapped_segments("7f0000f00000-7f0001000000 rw-p 00000000 00:00 0\n") == []


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_the_mapped_names_are_removed_and_one_already_gone_is_no_error(tmp_path):
    mine = Path(f"/dev/shm/mpich_shm_ndflowtest{os.getpid()}_0")
    gone = Path(f"/dev/shm/mpich_shm_ndflowtest{os.getpid()}_1")
    other = Path(f"/dev/shm/ndflowtest{os.getpid()}")
    mine.write_bytes(b"x")
    other.write_bytes(b"y")
    try:
        maps = tmp_path / "maps"
        maps.write_text("".join(f"7f00-7f01 rw-s 0 00:19 1 {path}\n"
                                for path in (mine, gone, other)))
        assert unlink_mapped(maps) == [str(mine)]
        assert not mine.exists()
        assert other.exists()  # not MPICH's
    finally:
        for path in (mine, other):
            path.unlink(missing_ok=True)


def test_without_proc_nothing_is_done(tmp_path):
    assert unlink_mapped(tmp_path / "no-such-maps") == []
