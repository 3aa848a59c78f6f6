"""The shared HDF5 file registry (ndflow.plugins.h5share): one handle owner, refcounted joins,
a late writer of the same acquisition rejoining, refusals; real files read back with h5py."""

from __future__ import annotations

import os
import threading

import h5py
import numpy as np
import pytest

from ndflow.plugins.h5share import Registry, SharedFileError


def openers(path, libver="earliest"):
    def reopen(accept):
        fd = os.open(path, os.O_RDONLY)
        try:
            if not accept(fd):
                return None
        finally:
            os.close(fd)
        return h5py.File(path, "r+", libver=libver)
    return lambda: h5py.File(path, "w", libver=libver), reopen


def test_writers_join_and_the_last_close_closes(tmp_path):
    reg, path = Registry(), tmp_path / "f.h5"
    a = reg.open(str(path), "HDF1", 1, "earliest", *openers(path))
    b = reg.open(str(path), "TABLE1", 1, "earliest", *openers(path))
    assert reg.holders(str(path)) == {"HDF1": 1, "TABLE1": 1}
    images = a.create_dataset("entry/data/data", data=np.arange(6).reshape(2, 3))
    rows = b.create_dataset("entry/table/uniqueId", shape=(0,), maxshape=(None,), dtype="i8")
    a.close()  # HDF1 is done: the table's datasets stay usable
    assert rows.id.valid
    rows.resize((3,))
    rows[:] = [1, 2, 3]
    b.close()
    b.close()  # a second close gives back nothing more
    assert reg.holders(str(path)) == {}
    with h5py.File(path, "r") as f:
        assert f["entry/data/data"][()].tolist() == [[0, 1, 2], [3, 4, 5]]
        assert f["entry/table/uniqueId"][()].tolist() == [1, 2, 3]


def test_a_late_writer_of_the_same_acquisition_rejoins(tmp_path):
    reg, path = Registry(), tmp_path / "f.h5"
    a = reg.open(str(path), "HDF1", 7, "earliest", *openers(path))
    a.create_dataset("entry/data/data", data=[1, 2])
    a.close()
    b = reg.open(str(path), "TABLE1", 7, "earliest", *openers(path))
    b.create_dataset("entry/table/uniqueId", data=[1, 2])
    b.close()
    with h5py.File(path, "r") as f:
        assert set(f["entry"]) == {"data", "table"}


@pytest.mark.parametrize("owner, acquisition", [("HDF1", 7), ("TABLE1", 8), ("TABLE1", None)])
def test_otherwise_the_file_is_made_anew(tmp_path, owner, acquisition):
    """The same writer again, another acquisition, or no acquisition: a new file, as
    areaDetector overwrites a name it is given again."""
    reg, path = Registry(), tmp_path / "f.h5"
    a = reg.open(str(path), "HDF1", 7, "earliest", *openers(path))
    a.create_dataset("old", data=[1])
    a.close()
    b = reg.open(str(path), owner, acquisition, "earliest", *openers(path))
    b.create_dataset("new", data=[2])
    b.close()
    with h5py.File(path, "r") as f:
        assert list(f) == ["new"]


def test_a_replaced_file_is_not_rejoined(tmp_path):
    reg, path = Registry(), tmp_path / "f.h5"
    a = reg.open(str(path), "HDF1", 7, "earliest", *openers(path))
    a.close()
    os.unlink(path)
    with h5py.File(path, "w") as f:  # someone else's file now has the name
        f["theirs"] = 1
    b = reg.open(str(path), "TABLE1", 7, "earliest", *openers(path))
    b.close()
    with h5py.File(path, "r") as f:
        assert "theirs" not in f


def test_swmr_files_cannot_be_joined(tmp_path):
    reg, path = Registry(), tmp_path / "f.h5"
    a = reg.open(str(path), "HDF1", 1, "latest", *openers(path, "latest"))
    a.create_dataset("d", shape=(0,), maxshape=(None,), dtype="f8", chunks=(4,))
    a.swmr_mode = True
    with pytest.raises(SharedFileError, match="SWMR mode by HDF1"):
        reg.open(str(path), "TABLE1", 1, "earliest", *openers(path))
    a.close()
    b = reg.open(str(tmp_path / "g.h5"), "TABLE1", 1, "earliest", *openers(tmp_path / "g.h5"))
    with pytest.raises(SharedFileError, match="SWMR needs its own file"):
        reg.open(str(tmp_path / "g.h5"), "HDF1", 1, "latest", *openers(tmp_path / "g.h5"))
    b.close()


def test_two_writers_in_threads_lose_no_row(tmp_path):
    """Two writers append blocks to their own datasets of one file, one also flushing, each
    block under the file's lock; every row is there afterwards."""
    reg, path = Registry(), tmp_path / "f.h5"
    handles = [reg.open(str(path), name, 1, "earliest", *openers(path))
               for name in ("HDF1", "TABLE1")]
    sets = [h.create_dataset(f"g{i}/rows", shape=(0,), maxshape=(None,), dtype="i8",
                             chunks=(16,)) for i, h in enumerate(handles)]
    start = threading.Barrier(2)

    def write(i: int) -> None:
        start.wait()
        for block in range(100):
            with handles[i].lock:
                n = sets[i].shape[0]
                sets[i].resize((n + 5,))
                sets[i][n:] = np.arange(n, n + 5)
                if i:
                    handles[i].flush()
        handles[i].close()
    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with h5py.File(path, "r") as f:
        for i in range(2):
            assert f[f"g{i}/rows"][()].tolist() == list(range(500))


def test_two_writers_opening_one_new_file_together_both_get_it(tmp_path):
    """HDF1 and Table1 told the same name open it at the same moment: one makes the file,
    the other joins it (a second h5py.File(path, "w") while the first is open fails with
    "unable to truncate a file which is already open": CI saw it in test_table)."""
    reg, path = Registry(), tmp_path / "f.h5"
    create, reopen = openers(path)
    both_looked = threading.Barrier(2)

    def slow_create():  # both writers have seen no open file before either makes it
        try:
            both_looked.wait(timeout=0.5)
        except threading.BrokenBarrierError:
            pass  # the other waits for this one to finish making it
        return create()

    files, errors = {}, []

    def open_as(owner):
        try:
            files[owner] = reg.open(str(path), owner, 1, "earliest", slow_create, reopen)
        except Exception as exc:
            errors.append(f"{owner}: {exc}")

    threads = [threading.Thread(target=open_as, args=(o,)) for o in ("HDF1", "TABLE1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors, errors
    assert reg.holders(str(path)) == {"HDF1": 1, "TABLE1": 1}
    files["HDF1"].create_dataset("entry/data/data", data=np.arange(3))
    files["TABLE1"].create_dataset("entry/table/uniqueId", data=[1, 2, 3])
    for f in files.values():
        f.close()
    with h5py.File(path, "r") as f:
        assert f["entry/data/data"][()].tolist() == [0, 1, 2]
        assert f["entry/table/uniqueId"][()].tolist() == [1, 2, 3]
