"""Replay's progress where no bar can redraw (issue 18): whole lines, the first at once, then at
most one per interval."""

from __future__ import annotations

from pathlib import Path

from ndflow import cli


def test_progress_lines_come_at_the_first_file_then_once_per_interval(monkeypatch, capsys):
    now = [100.0]
    monkeypatch.setattr(cli.time, "monotonic", lambda: now[0])
    show = cli.ProgressLines(interval=10.0)
    for done, at in enumerate([101.0, 102.0, 110.9, 111.0, 115.0, 121.5], start=1):
        now[0] = at
        show(done, 6, Path(f"/data/cam01/f{done}.fits"))
    assert capsys.readouterr().err.splitlines() == [
        "ndflow replay: 1/6 files after 1 s, last f1.fits",
        "ndflow replay: 4/6 files after 11 s, last f4.fits",
        "ndflow replay: 6/6 files after 22 s, last f6.fits",
    ]
