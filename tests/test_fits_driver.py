"""The FITS driver on a real IOC (issue 5, acceptance 1-2): files dropped into the watched folder
become frames once complete, each once; BITPIX and BSCALE/BZERO give the physical pixel values;
header keywords arrive downstream as attributes (Attribute plugin PVs, HDF5 file); bad files are
counted, reported and passed on as missing frames while the driver carries on."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import epics
import h5py
import numpy as np
import pytest
from astropy.io import fits

from conftest import running_ioc
from test_acquisition import get, put, wait_for

EPICS_EPOCH = 631152000.0
NX, NY = 24, 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fits")
    (folder / "incoming").mkdir()
    (folder / "h5").mkdir()
    return folder


@pytest.fixture(scope="module")
def ioc(folder):
    config = (
        f"data_roots: ['{folder}']\n"
        "drivers:\n"
        "  - {type: fits, port: FITS1, prefix: 'cam1:', options: {folder: incoming, "
        "settle_s: 0.4, poll_s: 0.05, acquire_at_start: true}}\n"
        "plugins:\n"
        "  - {type: stdarrays, port: Image1, prefix: 'image1:', input: FITS1, "
        "options: {data_type: Float64}}\n"
        "  - {type: attribute, port: ATTR1, prefix: 'Attr1:', input: FITS1, enabled: true}\n"
        "  - {type: hdf5, port: FileHDF1, prefix: 'HDF1:', input: FITS1, enabled: true}\n"
    )
    with running_ioc(config, folder) as proc:
        p = proc.prefix
        put(p + "Attr1:1:AttrName", "EXPTIME")
        put(p + "Attr1:2:AttrName", "CCD-TEMP")
        yield proc


def counts(p: str) -> tuple[int, int, int]:
    return tuple(get(p + f"cam1:Files{k}_RBV", use_monitor=False)
                 for k in ("Seen", "Read", "Failed"))


def drop(folder: Path, name: str, hdul: fits.HDUList | fits.PrimaryHDU) -> Path:
    """Write the file next to the watched folder and rename it in, as a careful writer does."""
    tmp = folder / f".{name}"
    hdul.writeto(tmp, overwrite=True)
    path = folder / "incoming" / name
    tmp.rename(path)
    return path


def header(**cards) -> fits.Header:
    h = fits.Header()
    h["DATE-OBS"] = ("2026-11-21T21:30:15.250", "start of exposure, UTC")
    h["EXPTIME"] = (12.5, "exposure time [s]")
    h["CCD-TEMP"] = (-20.25, "sensor temperature [C]")
    h["OBJECT"] = ("field 7", "target")
    h["CAMERA"] = (7, "camera number")
    h["SHUTTER"] = (True, "shutter opened")
    for key, value in cards.items():
        h[key] = value
    return h


def physical() -> np.ndarray:
    y, x = np.mgrid[0:NY, 0:NX]
    return (x * 3 + y * 100).astype(np.float64)  # 0 .. 1569


def hdu_for(case: str) -> fits.PrimaryHDU:
    values = physical()
    h = header()
    if case == "uint8":
        return fits.PrimaryHDU((values % 256).astype(np.uint8), h)
    if case == "int8":  # BITPIX 8 with BZERO -128: signed bytes
        hdu = fits.PrimaryHDU((values % 256 - 128).astype(np.int8), h)
        return hdu
    if case == "int16":
        return fits.PrimaryHDU((values - 800).astype(np.int16), h)
    if case == "uint16":  # BITPIX 16, BZERO 32768 (a camera's unsigned frame)
        return fits.PrimaryHDU((values * 40).astype(np.uint16), h)
    if case == "int32":
        return fits.PrimaryHDU((values * 1000 - 5).astype(np.int32), h)
    if case == "float32":
        return fits.PrimaryHDU((values / 7).astype(np.float32), h)
    if case == "float64":
        return fits.PrimaryHDU(values / 3 - 1e6, h)
    if case == "scaled":  # BITPIX 16 with BSCALE 0.5, BZERO 100: physical = 0.5 * raw + 100
        hdu = fits.PrimaryHDU(values / 2 + 100, h)
        hdu.scale("int16", bscale=0.5, bzero=100)
        return hdu
    raise ValueError(case)


EXPECTED = {  # case -> (BITPIX on disk, DataType_RBV, physical values)
    "uint8": (8, "UInt8", physical() % 256),
    "int8": (8, "Int8", physical() % 256 - 128),
    "int16": (16, "Int16", physical() - 800),
    "uint16": (16, "UInt16", physical() * 40),
    "int32": (32, "Int32", physical() * 1000 - 5),
    "float32": (-32, "Float32", (physical() / 7).astype(np.float32).astype(np.float64)),
    "float64": (-64, "Float64", physical() / 3 - 1e6),
    "scaled": (16, "Float32", physical() / 2 + 100),
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_bitpix_and_scaling_give_physical_values(ioc, folder, case):
    p = ioc.prefix
    seen, read, failed = counts(p)
    path = drop(folder, f"{case}.fits", hdu_for(case))
    bitpix, data_type, values = EXPECTED[case]
    with fits.open(path) as hdul:  # the file really is stored that way
        assert hdul[0].header["BITPIX"] == bitpix
    assert wait_for(lambda: counts(p) == (seen + 1, read + 1, failed), timeout=10), counts(p)
    assert wait_for(lambda: get(p + "image1:UniqueId_RBV") == get(p + "cam1:ArrayCounter_RBV"))
    image = np.asarray(get(p + "image1:ArrayData", count=NX * NY)).reshape(NY, NX)
    np.testing.assert_allclose(image, values, rtol=0, atol=1e-9 * np.abs(values).max())
    # Monitors of different PVs are not ordered with each other (each may lag the image by a
    # publish interval or two), so wait for each rather than read it once.
    assert wait_for(lambda: get(p + "cam1:DataType_RBV", as_string=True) == data_type, 3)
    assert wait_for(lambda: get(p + "cam1:LastFile_RBV", as_string=True) == str(path), 3)
    assert (get(p + "cam1:ArraySizeX_RBV"), get(p + "cam1:ArraySizeY_RBV")) == (NX, NY)


def test_tile_compressed_file_is_read_from_its_extension(ioc, folder):
    p = ioc.prefix
    read = counts(p)[1]
    values = (physical() * 40).astype(np.uint16)
    blob = fits.HDUList([fits.PrimaryHDU(header=header()),
                         fits.CompImageHDU(values, compression_type="RICE_1")])
    drop(folder, "packed.fits.fz", blob)
    assert wait_for(lambda: counts(p)[1] == read + 1, timeout=10), counts(p)
    assert wait_for(lambda: get(p + "cam1:LastFile_RBV", as_string=True).endswith(".fz"), 3)
    image = np.asarray(get(p + "image1:ArrayData", count=NX * NY)).reshape(NY, NX)
    np.testing.assert_array_equal(image, values)
    assert wait_for(lambda: get(p + "Attr1:1:Value_RBV") == pytest.approx(12.5))  # primary's


def test_header_keywords_are_attributes_and_date_obs_the_timestamp(ioc, folder):
    p = ioc.prefix
    read = counts(p)[1]
    drop(folder, "attrs.fits", fits.PrimaryHDU(physical().astype(np.uint16), header()))
    assert wait_for(lambda: counts(p)[1] == read + 1)
    assert wait_for(lambda: get(p + "Attr1:1:Value_RBV") == pytest.approx(12.5))
    assert get(p + "Attr1:2:Value_RBV") == pytest.approx(-20.25)
    when = 1795296615.25  # 2026-11-21T21:30:15.250Z
    assert get(p + "cam1:TimeStamp_RBV") == pytest.approx(when - EPICS_EPOCH, abs=1e-3)
    assert get(p + "image1:TimeStamp_RBV") == pytest.approx(when - EPICS_EPOCH, abs=1e-3)


def test_a_slowly_written_file_is_read_once_when_complete(ioc, folder):
    p = ioc.prefix
    seen, read, failed = counts(p)
    blob = fits.HDUList([fits.PrimaryHDU((physical() * 40).astype(np.uint16), header())])
    tmp = folder / "slow.tmp"
    blob.writeto(tmp)
    data = tmp.read_bytes()
    tmp.unlink()
    path = folder / "incoming" / "slow.fits"

    def writer():  # four chunks, pauses shorter than settle_s
        with open(path, "wb") as f:
            for i in range(4):
                f.write(data[i * len(data) // 4:(i + 1) * len(data) // 4])
                f.flush()
                time.sleep(0.25)

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    assert wait_for(lambda: counts(p) == (seen + 1, read + 1, failed), timeout=10), counts(p)
    image = np.asarray(get(p + "image1:ArrayData", count=NX * NY)).reshape(NY, NX)
    np.testing.assert_array_equal(image, physical() * 40)
    path.touch()  # touched again later: still read only once
    time.sleep(1.0)
    assert counts(p) == (seen + 1, read + 1, failed)


def bad_files(folder: Path) -> dict[str, str]:
    """name -> what LastError_RBV must say about it."""
    good = folder / "good.tmp"
    fits.PrimaryHDU(physical().astype(np.uint16), header()).writeto(good, overwrite=True)
    whole = good.read_bytes()
    good.unlink()
    table = fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="flux", format="E", array=np.arange(3.0))])])
    table.writeto(folder / "table.tmp", overwrite=True)
    return {
        "truncated.fits": (whole[: len(whole) // 2], "truncated"),
        "corrupt.fits": (b"NOT A FITS FILE " * 400, "not appear to be a valid FITS"),
        "empty.fits": (b"", "Empty or corrupt FITS file"),
        "table.fits": ((folder / "table.tmp").read_bytes(), "no image HDU"),
    }


def test_bad_files_are_counted_reported_and_passed_on_as_missing(ioc, folder):
    p = ioc.prefix
    put(p + "HDF1:FilePath", str(folder / "h5"))
    put(p + "HDF1:FileName", "bad")
    put(p + "HDF1:FileTemplate", "%s%s_%3.3d.h5")
    put(p + "HDF1:FileWriteMode", "Stream")
    put(p + "HDF1:NumCapture", 0)
    put(p + "HDF1:Capture", 1, wait=False)
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV", use_monitor=False) == 1)
    seen, read, failed = counts(p)
    for name, (blob, reason) in bad_files(folder).items():
        (folder / "incoming" / name).write_bytes(blob)
        assert wait_for(lambda: counts(p)[2] == failed + 1, timeout=10), (name, counts(p))
        failed += 1
        assert wait_for(lambda: get(p + "cam1:LastError_RBV", as_string=True).startswith(name),
                        timeout=3)
        error = get(p + "cam1:LastError_RBV", as_string=True)
        assert reason in error, error
    drop(folder, "after.fits", fits.PrimaryHDU((physical() * 40).astype(np.uint16), header()))
    assert wait_for(lambda: counts(p) == (seen + 5, read + 1, failed), timeout=10), counts(p)
    assert get(p + "cam1:DetectorState_RBV", as_string=True) == "Acquire"  # carries on
    assert wait_for(lambda: get(p + "HDF1:NumCaptured_RBV", use_monitor=False) == 5)
    put(p + "HDF1:Capture", 0)
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV", use_monitor=False) == 0)
    with h5py.File(get(p + "HDF1:FullFileName_RBV", as_string=True)) as f:
        missing = f["/entry/ndflow/missing"][()]
        causes = [m["cause"].decode() if isinstance(m["cause"], bytes) else m["cause"]
                  for m in missing]
        assert causes == ["unreadable input"] * 4
        attrs = f["/entry/instrument/NDAttributes"]
        assert attrs["EXPTIME"][-1] == pytest.approx(12.5)
        assert attrs["EXPTIME"].attrs["description"] == "exposure time [s]"
        assert attrs["SHUTTER"][-1] == 1
        assert attrs["FileName"][-1].decode() == "after.fits"
        assert attrs["CameraId"][-1].decode() == "7"
        np.testing.assert_array_equal(f["/entry/data/data"][-1], physical() * 40)


def test_folder_outside_the_data_roots_is_refused(ioc, folder):
    p = ioc.prefix
    before = get(p + "cam1:Folder", as_string=True)
    assert epics.caput(p + "cam1:Folder", "/etc", wait=True) != 1 or \
        get(p + "cam1:Folder_RBV", as_string=True) == before
    assert get(p + "cam1:Folder_RBV", as_string=True) == before == str(folder / "incoming")


SECRET = 4242  # the pixels of files outside the data roots: they must never reach a client


def outside_file(where: Path, name: str) -> Path:
    """A FITS file a client must not be able to read: its pixels SECRET, EXPTIME 999.5 and a
    header card whose text must never show up in a message."""
    where.mkdir(parents=True, exist_ok=True)
    h = header(EXPTIME=(999.5, "exposure time [s]"), PASSWORD=("hunter2", "private"))
    path = where / name
    fits.PrimaryHDU(np.full((NY, NX), SECRET, np.uint16), h).writeto(path, overwrite=True)
    return path


def secret_seen(p: str) -> bool:
    image = np.asarray(get(p + "image1:ArrayData", count=NX * NY, use_monitor=False))
    return bool(np.any(image == SECRET)) or \
        get(p + "Attr1:1:Value_RBV", use_monitor=False) == pytest.approx(999.5)


def test_a_symlink_in_the_watched_folder_is_refused_not_read(ioc, folder, tmp_path_factory):
    p = ioc.prefix
    target = outside_file(tmp_path_factory.mktemp("outside"), "private.fits")
    seen, read, failed = counts(p)
    link = folder / "incoming" / "planted.fits"
    link.symlink_to(target)
    try:
        assert wait_for(lambda: counts(p)[2] == failed + 1, timeout=10), counts(p)
        assert wait_for(lambda: get(p + "cam1:LastError_RBV", as_string=True)
                        .startswith("planted.fits"), timeout=3)
        error = get(p + "cam1:LastError_RBV", as_string=True)
        assert "symbolic link refused" in error, error
        assert "hunter2" not in error and "PASSWORD" not in error
        assert not secret_seen(p)
        # the driver carries on, and the link is never read later
        drop(folder, "after_link.fits",
             fits.PrimaryHDU((physical() * 40).astype(np.uint16), header()))
        assert wait_for(lambda: counts(p) == (seen + 2, read + 1, failed + 1), timeout=10), \
            counts(p)
        image = np.asarray(get(p + "image1:ArrayData", count=NX * NY)).reshape(NY, NX)
        np.testing.assert_array_equal(image, physical() * 40)
        time.sleep(1.0)
        assert counts(p) == (seen + 2, read + 1, failed + 1)
        assert not secret_seen(p)
        assert get(p + "cam1:DetectorState_RBV", as_string=True) == "Acquire"
    finally:
        link.unlink()


def test_the_watched_folder_swapped_for_a_symlink_yields_no_frame(ioc, folder,
                                                                   tmp_path_factory):
    p = ioc.prefix
    outside = tmp_path_factory.mktemp("outside_folder")
    watched = folder / "swapped"
    watched.mkdir()
    put(p + "cam1:Folder", str(watched))
    assert get(p + "cam1:Folder_RBV", as_string=True) == str(watched)
    try:
        frames_before = get(p + "cam1:ArrayCounter_RBV", use_monitor=False)
        seen, read, failed = counts(p)
        watched.rename(folder / "swapped.real")  # the folder a client named, now a link out
        watched.symlink_to(outside, target_is_directory=True)
        for i in range(3):
            outside_file(outside, f"frame{i}.fits")
        (outside / "cam01").mkdir()
        outside_file(outside / "cam01", "nested.fits")
        time.sleep(2.0)  # several scans and settle times
        assert counts(p)[1] == read and counts(p)[0] == seen, counts(p)
        assert get(p + "cam1:ArrayCounter_RBV", use_monitor=False) == frames_before
        assert not secret_seen(p)
        error = get(p + "cam1:LastError_RBV", as_string=True)
        assert "swapped" in error and "symbolic link" in error, error
        # a link inside the watched folder to a folder outside is not followed either
        watched.unlink()
        (folder / "swapped.real").rename(watched)
        (watched / "cam02").symlink_to(outside, target_is_directory=True)
        assert wait_for(lambda: get(p + "cam1:LastError_RBV", as_string=True)
                        == "cam02: symbolic link refused (not followed)", timeout=5)
        time.sleep(1.5)
        assert counts(p)[1] == read, counts(p)
        assert get(p + "cam1:ArrayCounter_RBV", use_monitor=False) == frames_before
        assert not secret_seen(p)
    finally:
        put(p + "cam1:Folder", str(folder / "incoming"))


def test_listing_matches_glob_but_never_follows_a_link(tmp_path):
    """The watcher's listing (`safepath.find`) matches Pattern as `Path.glob` does, but lists
    through descriptors: a link is reported by its own lstat, never entered, never opened."""
    from ndflow import safepath

    outside = tmp_path / "outside"
    target = outside_file(outside, "private.fits")
    root = tmp_path / "root"
    for sub in ("cam01", "cam02/night", ".hidden"):
        (root / sub).mkdir(parents=True)
    for name in ("a.fits", "b.fits.fz", "c.txt", "cam01/x.fits", "cam02/night/y.fits",
                 ".hidden/h.fits"):
        (root / name).write_bytes(b"x")
    (root / "link.fits").symlink_to(target)
    (root / "cam03").symlink_to(outside, target_is_directory=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for pattern in ("**/*.fits*", "*.fits", "cam*/*.fits", "cam*/**/*.fits", "*"):
            found = safepath.find(fd, pattern)
            files = {"/".join(f.parts) for f in found if f.matched and not f.is_link}
            globbed = {str(q.relative_to(root)) for q in root.glob(pattern)
                       if q.is_file() and not q.is_symlink()
                       and not q.relative_to(root).parts[0] == "cam03"}
            assert files == globbed, pattern
            assert all(f.parts[0] != "cam03" or f.parts == ("cam03",) for f in found)
        links = {"/".join(f.parts): f.matched for f in safepath.find(fd, "**/*.fits*")
                 if f.is_link}
        assert links == {"link.fits": True, "cam03": False}
        with pytest.raises(safepath.LinkRefused, match="link.fits: symbolic link refused"):
            safepath.open_file_at(fd, "link.fits", "link.fits")
        # a file listed, then swapped for a link before it is read: refused at the open
        (root / "a.fits").unlink()
        (root / "a.fits").symlink_to(target)
        with pytest.raises(safepath.LinkRefused):
            safepath.open_file(safepath.Location(root, ("a.fits",)))
        with pytest.raises(safepath.PathRefused, match="symbolic link"):
            safepath.open_file(safepath.Location(root, ("cam03", "private.fits")))
    finally:
        os.close(fd)


def test_a_file_deleted_and_written_again_is_read_again(ioc, folder):
    """What was read is remembered only while the file is there (the watch does not keep every
    name it ever saw): the same name written again later is a new file."""
    p = ioc.prefix
    seen, read, failed = counts(p)
    frame = fits.PrimaryHDU((physical() * 40).astype(np.uint16), header())
    path = drop(folder, "again.fits", frame)
    assert wait_for(lambda: counts(p) == (seen + 1, read + 1, failed), timeout=10), counts(p)
    path.unlink()
    time.sleep(0.3)
    drop(folder, "again.fits", fits.PrimaryHDU((physical() * 20).astype(np.uint16), header()))
    assert wait_for(lambda: counts(p) == (seen + 2, read + 2, failed), timeout=10), counts(p)
    image = np.asarray(get(p + "image1:ArrayData", count=NX * NY)).reshape(NY, NX)
    np.testing.assert_array_equal(image, physical() * 20)
    (folder / "incoming" / "again.fits").unlink()


def test_a_large_watched_folder_costs_nothing_while_idle(ioc, folder):
    """10 000 files already in a tree of camera folders: they are listed once when the folder is
    set (not new, not read), then only changes are looked at. Re-listing the tree at every
    poll (0.05 s here) would keep the IOC busy all the time. A file written into a camera folder
    afterwards is still found."""
    import psutil

    p = ioc.prefix
    big = folder / "big"
    for cam in range(20):
        sub = big / f"cam{cam:02d}"
        sub.mkdir(parents=True)
        for i in range(500):
            (sub / f"old{i:04d}.fits").write_bytes(b"")
    try:
        seen, read, failed = counts(p)
        put(p + "cam1:Folder", str(big))  # completes once the files there are listed
        ioc_process = psutil.Process(ioc.proc.pid)
        time.sleep(0.5)
        before = ioc_process.cpu_times()
        time.sleep(3.0)
        after = ioc_process.cpu_times()
        busy = (after.user + after.system) - (before.user + before.system)
        assert busy < 0.45, f"the idle IOC used {busy:.2f} s of CPU in 3 s"
        assert counts(p) == (seen, read, failed)
        path = big / "cam07" / "new.fits"
        tmp = big / "cam07" / ".new.fits"
        fits.PrimaryHDU((physical() * 40).astype(np.uint16), header()).writeto(tmp)
        tmp.rename(path)
        assert wait_for(lambda: counts(p) == (seen + 1, read + 1, failed), timeout=10), \
            counts(p)
        assert get(p + "cam1:LastFile_RBV", as_string=True) == str(path)
    finally:
        put(p + "cam1:Folder", str(folder / "incoming"))
