"""The NEOSTED deployment (issue 5, acceptance 3-5): `ndflow replay` of synthetic star fields at
known defocus through the example config; and live, on loopback, cameras uploading by FTP to the
gateway, the files arriving byte-identical on an archive FTP server (in order and once across an
archive outage), the focus PVs updating and the figure of merit going into alarm."""

from __future__ import annotations

import ftplib
import os
import re
import subprocess
import sys
from pathlib import Path

import epics
import h5py
import numpy as np

from conftest import NDFLOW, REPO, free_port_pair, running_ioc
from test_acquisition import get, wait_for
from test_ftp_gateway import ARCHIVE_PW, ARCHIVE_USER, Archive

NEOSTED = REPO / "examples" / "neosted"
sys.path.insert(0, str(NEOSTED))
import starfield  # noqa: E402  (the example's generator)

DEFOCUS = [0, 1, 2, 3, 4, 6]
FIELD = dict(shape=(256, 256), stars=30)
CAMERA_PW = "cam-secret-7"


def frames(folder: Path, camera: int, defocus: list[float], seed: int = 3) -> list[Path]:
    (folder / f"cam{camera:02d}").mkdir(parents=True, exist_ok=True)
    return [starfield.write_starfield(
        folder / f"cam{camera:02d}" / f"CAM{camera:02d}_{seed}_{i:04d}.fits", camera=camera,
        defocus=d, seed=seed, sequence=i + 1, frame=i, **FIELD) for i, d in enumerate(defocus)]


def test_replay_figure_of_merit_rises_with_defocus(tmp_path):
    files = frames(tmp_path, 7, DEFOCUS)
    bad = tmp_path / "cam07" / "CAM07_broken.fits"
    bad.write_bytes(files[0].read_bytes()[:5000])  # truncated: reported, row kept
    table = tmp_path / "focus.h5"
    done = subprocess.run(NDFLOW + ["replay", str(NEOSTED / "neosted.yml"), *map(str, files),
                                    str(bad), "--table", str(table)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # one file gave no frame
    assert "7 files" in done.stdout and "6 frames" in done.stdout
    assert "1 unreadable input" in done.stdout
    assert "Traceback" not in done.stderr
    # not on a terminal: progress as whole lines (the first file at once), no bar
    assert "ndflow replay: 1/7 files after" in done.stderr and "\r" not in done.stderr
    with h5py.File(table) as f:
        rows = f["replay"]
        assert [p.decode() for p in rows["file"][()]] == [str(p) for p in files + [bad]]
        hfd = rows["Focus:Hfd_RBV"][()]
        assert np.all(np.diff(hfd[:6]) > 0), hfd  # the figure of merit follows the defocus
        assert np.isnan(hfd[6])
        assert rows["status"][6].decode().startswith("unreadable input: CAM07_broken.fits")
        np.testing.assert_array_equal(rows["Field:Camera_RBV"][:6], 7)
        np.testing.assert_allclose(rows["Field:HfdCam07_RBV"][:6], hfd[:6])
        assert np.all(np.isnan(rows["Field:HfdCam01_RBV"][:6]))
        np.testing.assert_allclose(rows["Field:Seeing_RBV"][:6], 1.5)


def test_replay_reports_a_config_without_a_file_driver(tmp_path):
    done = subprocess.run(NDFLOW + ["replay", str(REPO / "ioc" / "configs" / "default.yml"),
                                    str(NEOSTED / "neosted.yml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "type: fits" in done.stderr


def live_config(tmp_path: Path, gateway_port: int, archive_port: int) -> str:
    """The example config, moved onto loopback and this test's folders."""
    text = (NEOSTED / "neosted.yml").read_text()
    text = text.replace("data_roots: [data]", f"data_roots: ['{tmp_path}']")
    text = re.sub(r"screens_dir: .*\n", "", text)
    text = text.replace("algorithm_folders: [algorithms, ../algorithms]",
                        f"algorithm_folders: ['{NEOSTED / 'algorithms'}', "
                        f"'{REPO / 'examples' / 'algorithms'}']")
    text = text.replace('listen: "0.0.0.0:2121"', f'listen: "127.0.0.1:{gateway_port}"')
    text = re.sub(r"upstream: \{host: [^,]+, port: 21, user: neosted,",
                  f"upstream: {{host: 127.0.0.1, port: {archive_port}, "
                  f"user: {ARCHIVE_USER},", text)
    text = text.replace("      gateway:\n", "      gateway:\n        retry_s: 0.2\n"
                        "        max_retry_s: 0.5\n")
    assert f"127.0.0.1:{gateway_port}" in text and f"port: {archive_port}" in text
    return text


def upload(port: int, path: Path) -> None:
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", port, timeout=10)
        ftp.login("camera", CAMERA_PW)
        folder = path.parent.name
        if folder not in ftp.nlst():
            ftp.mkd(folder)
        with open(path, "rb") as f:
            ftp.storbinary(f"STOR {folder}/{path.name}", f)


def severity(name: str) -> int:
    pv = epics.get_pv(name, form="time")
    assert pv.wait_for_connection(5), name
    value = pv.get_with_metadata(use_monitor=False, form="time")
    assert value is not None, name
    return int(value["severity"])


def test_cameras_upload_through_the_gateway_and_focus_alarms(tmp_path):
    archive = Archive(tmp_path / "archive").start()
    gateway_port = free_port_pair()
    os.environ.update(NEOSTED_FTP_PASSWORD=CAMERA_PW, NEOSTED_ARCHIVE_PASSWORD=ARCHIVE_PW)
    sharp = frames(tmp_path / "camera", 1, [0, 0.5]) + frames(tmp_path / "camera", 2, [0, 0.5])
    blurred = frames(tmp_path / "camera", 1, [6, 6.5], seed=4) + \
        frames(tmp_path / "camera", 2, [6, 6.5], seed=4)
    config = live_config(tmp_path, gateway_port, archive.port)
    try:
        with running_ioc(config, tmp_path, timeout=60, ready="fits:Acquire_RBV") as ioc:
            p = ioc.prefix
            assert wait_for(lambda: get(p + "fits:FTPUpstream_RBV", as_string=True,
                                        use_monitor=False) == "Connected", timeout=10)
            for path in sharp:
                upload(gateway_port, path)
            assert wait_for(lambda: len(archive.received) == 4, timeout=15)
            assert wait_for(lambda: get(p + "Field:CamerasReporting_RBV",
                                        use_monitor=False) == 2, timeout=15)
            assert get(p + "fits:FilesRead_RBV", use_monitor=False) == 4
            hfd_sharp = get(p + "Field:FieldHfd_RBV", use_monitor=False)
            assert 2 < hfd_sharp < 7 and severity(p + "Field:FieldHfd_RBV") == 0

            archive.stop()  # the archive goes away; cameras keep uploading
            for path in blurred[:2]:  # camera 1 defocused
                upload(gateway_port, path)
            assert wait_for(lambda: get(p + "fits:FTPQueued_RBV", use_monitor=False) == 2,
                            timeout=15)
            assert get(p + "fits:FTPUpstream_RBV", as_string=True, use_monitor=False) == "Down"
            # the focus keeps working while the archive is down
            assert wait_for(lambda: get(p + "fits:FilesRead_RBV", use_monitor=False) == 6,
                            timeout=15)
            assert wait_for(lambda: severity(p + "Field:HfdCam01_RBV") == 2, timeout=10)
            assert severity(p + "Field:HfdCam02_RBV") == 0
            assert severity(p + "Field:FieldHfd_RBV") == 1  # median of a blurred and a sharp
            for path in blurred[2:]:  # camera 2 too: the field is out of focus
                upload(gateway_port, path)
            assert wait_for(lambda: severity(p + "Field:FieldHfd_RBV") == 2, timeout=15)
            # counted before each upload's "226", but published within an interval after it:
            # read at once after the last upload (the field already red) it showed 3 in one CI run
            assert wait_for(lambda: get(p + "fits:FTPQueued_RBV", use_monitor=False) == 4,
                            timeout=5)

            archive = Archive(tmp_path / "archive", archive.port).start()  # back
            assert wait_for(lambda: get(p + "fits:FTPQueued_RBV", use_monitor=False) == 0,
                            timeout=20)
            assert get(p + "fits:FTPUpstream_RBV", as_string=True, use_monitor=False) == \
                "Connected"
            assert get(p + "fits:FTPForwarded_RBV", use_monitor=False) == 8
            assert get(p + "fits:FTPUploads_RBV", use_monitor=False) == 8
    finally:
        archive.stop()
    stored = sorted((tmp_path / "archive").rglob("*.fits"))
    assert len(stored) == 8 and not list((tmp_path / "archive").rglob("*.part"))
    sent = {p.name: p.read_bytes() for p in sharp + blurred}
    assert {p.name: p.read_bytes() for p in stored} == sent  # byte-identical, once each
    second = [Path(n).name.removesuffix(".part") for n in archive.received]
    assert second == [p.name for p in blurred]  # the queued ones, in upload order
