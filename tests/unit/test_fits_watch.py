"""The FITS driver's folder watch (drivers/fits_watch.py) on a real folder with real inotify:
its pattern reading agrees with the listing's (`safepath.find`), what it remembers is bounded
by what the folder holds, and a link below the root is never watched or followed."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from ndflow import safepath
from ndflow.drivers.fits_watch import FolderWatch, Match

PATTERNS = ("**/*.fits*", "*.fits", "cam*/*.fits", "cam*/**/*.fits", "*", "**/night/*.fits")
TREE = ("a.fits", "b.fits.fz", "c.txt", "cam01/x.fits", "cam02/night/y.fits",
        "cam02/night/deep/z.fits", "other/night/w.fits")


def test_match_reads_a_pattern_as_the_listing_does(tmp_path):
    for name in TREE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for pattern in PATTERNS:
            listed = {f.parts for f in safepath.find(fd, pattern)}
            matched = {Path(n).parts for n in TREE if Match(pattern).file(Path(n).parts)}
            assert matched == listed, pattern
    finally:
        os.close(fd)


def settled(watch: FolderWatch, stop: threading.Event, want: int, timeout: float = 5.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += watch.wait(0.05, stop)
    return got


def test_what_is_remembered_is_what_the_folder_holds(tmp_path):
    root = tmp_path / "root"
    (root / "cam01").mkdir(parents=True)
    for i in range(50):
        (root / "cam01" / f"old{i}.fits").write_bytes(b"x")
    reports: list[str] = []
    watch = FolderWatch(0.0, reports.append)
    stop = threading.Event()
    watch.retarget(root, safepath.Location(root, ()), "**/*.fits*")
    try:
        assert len(watch.seen) == 50 and settled(watch, stop, 1, timeout=0.5) == []
        for i in range(20):
            (root / "cam01" / f"new{i}.fits").write_bytes(b"y")
        assert len(settled(watch, stop, 20)) == 20
        assert len(watch.seen) == 70
        for path in list((root / "cam01").iterdir()):
            path.unlink()
        settled(watch, stop, 1, timeout=0.5)
        assert watch.seen == set()
        (root / "cam02").mkdir()  # a new camera folder is watched too
        time.sleep(0.2)
        settled(watch, stop, 1, timeout=0.5)
        (root / "cam02" / "first.fits").write_bytes(b"z")
        assert [s.path for s in settled(watch, stop, 1)] == [root / "cam02" / "first.fits"]
        assert reports == []
    finally:
        watch.close()


def test_a_linked_folder_is_neither_watched_nor_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "cam09").symlink_to(outside, target_is_directory=True)
    reports: list[str] = []
    watch = FolderWatch(0.0, reports.append)
    stop = threading.Event()
    watch.retarget(root, safepath.Location(root, ()), "**/*.fits*")
    try:
        assert reports == ["cam09: symbolic link refused (not followed)"]
        (outside / "private.fits").write_bytes(b"secret")
        assert settled(watch, stop, 1, timeout=1.0) == []
        (root / "real.fits").write_bytes(b"x")
        assert [s.path for s in settled(watch, stop, 1)] == [root / "real.fits"]
    finally:
        watch.close()


def test_the_folder_gone_is_said_and_watched_again_when_back(tmp_path):
    root = tmp_path / "root"
    watched = root / "incoming"
    watched.mkdir(parents=True)
    watch = FolderWatch(0.0, lambda text: None)
    stop = threading.Event()
    watch.retarget(watched, safepath.Location(root, ("incoming",)), "*.fits")
    try:
        watched.rmdir()
        with pytest.raises(FileNotFoundError):
            watch.wait(0.05, stop)
        watched.mkdir()  # may well get the same inode number back
        (watched / "back.fits").write_bytes(b"x")
        assert [s.path for s in settled(watch, stop, 1)] == [watched / "back.fits"]
    finally:
        watch.close()
