"""The master file over rank files, and the cluster section's errors (no MPI here: real HDF5
files written with h5py in the single-process writer's layout, read back with h5py)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from ndflow.cluster.config import check_roles
from ndflow.cluster.master import STATUS_CODES, _runs, build_master
from ndflow.config import ConfigError, parse_config
from ndflow.ndarray import MissingCause

ATTRS = "/entry/instrument/NDAttributes"


def rank_file(path: Path, uids: list[int], dropped: set[int] = frozenset()) -> Path:
    """A rank's file as plugins/hdf5.py lays it out: frame i is filled with its uid, a dropped
    frame's row holds the fill value (0) and has a missing-table entry."""
    with h5py.File(path, "w") as f:
        data = f.create_dataset("/entry/data/data", shape=(len(uids), 4, 6), dtype="u2")
        for row, uid in enumerate(uids):
            if uid not in dropped:
                data[row] = uid
        f[f"{ATTRS}/NDArrayUniqueId"] = np.array(uids, "i4")
        f[f"{ATTRS}/NDArrayStatus"] = np.array(
            [STATUS_CODES[MissingCause.DROPPED] if u in dropped else 0 for u in uids], "i1")
        f[f"{ATTRS}/NDArrayStatus"].attrs["meaning"] = "0 valid; ..."
        f[f"{ATTRS}/Gain"] = np.array([u * 0.5 for u in uids])
        missing = np.array([(u, b"overrun/dropped", b"FileHDF1 queue full")
                            for u in sorted(dropped)],
                           dtype=[("unique_id", "i4"), ("cause", "S24"), ("message", "S120")])
        f.create_dataset("/entry/ndflow/missing", data=missing, maxshape=(None,))
        f.create_group("/entry/ndflow/acquisitions/1").attrs["driver"] = "{}"
    return path


def create(path: Path):
    return h5py.File(path, "w")


def test_master_is_every_frame_in_unique_id_order_over_round_robin_files(tmp_path):
    r1 = rank_file(tmp_path / "m_r1.h5", [1, 3, 5, 7, 9])
    r2 = rank_file(tmp_path / "m_r2.h5", [2, 4, 6, 8, 10], dropped={6})
    summary = build_master(create, tmp_path / "m.h5", [(1, r1), (2, r2)], fill=7)
    assert summary.frames == 10 and summary.missing == 1 and summary.ranks == {1: 5, 2: 5}
    with h5py.File(tmp_path / "m.h5") as f:
        data = f["/entry/data/data"]
        assert data.is_virtual and data.shape == (10, 4, 6)
        assert [int(data[i][0, 0]) for i in range(10)] == [1, 2, 3, 4, 5, 0, 7, 8, 9, 10]
        np.testing.assert_array_equal(f[f"{ATTRS}/NDArrayUniqueId"][:], np.arange(1, 11))
        np.testing.assert_array_equal(f[f"{ATTRS}/Gain"][:], np.arange(1, 11) * 0.5)
        status = f[f"{ATTRS}/NDArrayStatus"][:]
        assert list(np.flatnonzero(status)) == [5] and status[5] == 2
        missing = f["/entry/ndflow/missing"][:]
        assert list(missing["unique_id"]) == [6] and missing["cause"][0] == b"overrun/dropped"
        assert "1" in f["/entry/ndflow/acquisitions"]
        # relative links: the folder can move
        assert dict(f["/entry/ndflow/ranks"].attrs) == {"rank1": "m_r1.h5", "rank2": "m_r2.h5"}
        assert data.virtual_sources()[0].file_name in ("m_r1.h5", "m_r2.h5")


def test_a_frame_in_no_rank_file_is_a_timeout_row_and_the_limit_keeps_the_first(tmp_path):
    r1 = rank_file(tmp_path / "a.h5", [1, 2, 4])  # 3 never reached a file
    r2 = rank_file(tmp_path / "b.h5", [5, 6])
    build_master(create, tmp_path / "m.h5", [(1, r1), (2, r2), (3, tmp_path / "none.h5")],
                 limit=5, fill=9)
    with h5py.File(tmp_path / "m.h5") as f:
        data = f["/entry/data/data"]
        assert data.shape == (5, 4, 6)
        assert int(data[2][0, 0]) == 9  # the fill value
        np.testing.assert_array_equal(f[f"{ATTRS}/NDArrayUniqueId"][:], [1, 2, 3, 4, 5])
        assert f[f"{ATTRS}/NDArrayStatus"][2] == STATUS_CODES[MissingCause.TIMEOUT]
        missing = f["/entry/ndflow/missing"][:]
        assert list(missing["unique_id"]) == [3] and missing["cause"][0] == b"timeout"


def test_runs_cut_rank_rows_into_strided_mappings():
    assert _runs([(0, 0), (2, 1), (4, 2), (5, 3), (9, 4)]) == [(0, 4, 2, 0), (5, 9, 4, 3)]
    assert _runs([(0, 0), (2, 1), (3, 2), (7, 3)]) == [(0, 2, 2, 0), (3, 7, 4, 2)]
    assert _runs([(1, 0), (3, 1)]) == [(1, 3, 2, 0)]


CONFIG = """\
drivers:
  - {type: sim, port: SIM1}
cluster:
  control: 0
  processing: [1, 2]
"""


def test_cluster_section_errors_name_the_key_and_line():
    config, _ = parse_config(CONFIG)
    assert config.cluster.processing == [1, 2] and config.cluster.dispatch == "round_robin"
    with pytest.raises(ConfigError, match=r"line 6: cluster.bogus: unknown key"):
        parse_config(CONFIG + "  bogus: 1\n", "c.yml")
    with pytest.raises(ConfigError, match=r"line 6: cluster.dispatch: Input should be"):
        parse_config(CONFIG + "  dispatch: fastest\n", "c.yml")
    with pytest.raises(ConfigError, match=r"cluster: Value error, in this version the control"):
        parse_config(CONFIG.replace("[1, 2]", "[0, 1]"), "c.yml")
    config, lines = parse_config(CONFIG, "c.yml")
    with pytest.raises(ConfigError, match=r"c.yml line 5: cluster.processing\[1\]: rank 2, but "
                                          r"mpiexec started 2 ranks"):
        check_roles(config.cluster, 2, lines)
    with pytest.raises(ConfigError, match=r"rank 3, which has no role"):
        check_roles(config.cluster, 4, lines)
    check_roles(config.cluster, 3, lines)
