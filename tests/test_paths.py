"""No PV can make the IOC write outside its data roots or read a file outside its folders.

Two attacks a network client (plus, for the race, a local user) can mount, each against a real
IOC over Channel Access:

- the symlink race: while TIFF1 and HDF1 write a file per frame into a folder under the data
  root, a thread swaps that folder with a symlink to a folder outside the roots as fast as it
  can. A writer that checks the path and then opens it by name writes outside now and then; one
  that opens every folder and the file relative to the root's descriptor, refusing links, never
  does.
- NDAttributesFile naming /etc/shadow, /proc/self/environ, `../` paths or a link out, from an
  IOC whose working directory is `/`, and a readable file that is not attribute XML: all are
  refused, and no message (StatusMessage_RBV, the log) quotes the file.
"""

from __future__ import annotations

import ctypes
import os
import textwrap
import threading
import time
from pathlib import Path

import epics
import pytest

from test_acquisition import get, put

RACE_SECONDS = 5.0


def race_config(root: Path) -> str:
    return textwrap.dedent(f"""
        data_roots: ["{root}"]
        drivers:
          - {{type: sim, port: SIM1, prefix: "cam1:",
             options: {{max_size_x: 16, max_size_y: 16, data_type: UInt8}}}}
        plugins:
          - {{type: hdf5, port: FileHDF1, prefix: "HDF1:", input: SIM1, enabled: true,
             queue_size: 50}}
          - {{type: tiff, port: FileTIFF1, prefix: "TIFF1:", input: SIM1, enabled: true,
             queue_size: 50}}
        """)


class Flipper(threading.Thread):
    """Swaps `folder` (a real directory) with `decoy` (a symlink to a folder outside the roots)
    in a loop: with renameat2(RENAME_EXCHANGE) where the kernel has it, so the name always
    exists and is a directory half the time and a link out the other half; else with two
    renames through a parked name."""

    RENAME_EXCHANGE = 2

    def __init__(self, folder: Path, decoy: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.decoy = folder, decoy
        self.stop = threading.Event()
        self.flips = 0
        libc = ctypes.CDLL(None, use_errno=True)
        self._renameat2 = getattr(libc, "renameat2", None)
        if self._renameat2 is not None and self._exchange() != 0:
            self._renameat2 = None  # the file system cannot exchange: fall back
        elif self._renameat2 is not None:
            self._exchange()  # back to the start

    def _exchange(self) -> int:
        AT_FDCWD = -100
        return self._renameat2(AT_FDCWD, os.fsencode(self.folder), AT_FDCWD,
                               os.fsencode(self.decoy), self.RENAME_EXCHANGE)

    def run(self) -> None:
        parked = self.folder.with_name(self.folder.name + ".parked")
        while not self.stop.is_set():
            if self._renameat2 is not None:
                self._exchange()
                self._exchange()
            else:
                os.rename(self.folder, parked)  # the real folder out
                os.rename(self.decoy, self.folder)  # the link in
                os.rename(self.folder, self.decoy)  # the link out
                os.rename(parked, self.folder)  # the real folder back
            self.flips += 2


def test_a_folder_swapped_for_a_symlink_while_writing_never_leads_outside(start_ioc, tmp_path):
    root = tmp_path / "root"
    target = root / "scan"
    outside = tmp_path / "outside"
    for folder in (root, target, outside):
        folder.mkdir()
    decoy = root / "decoy"
    decoy.symlink_to(outside, target_is_directory=True)
    ioc = start_ioc(race_config(root), prefix="PATHS1:")
    p = ioc.prefix

    # At rest first: a link below the root is refused as a folder, on the way to a folder to
    # create, and as the file name itself.
    put(p + "HDF1:CreateDirectory", -3)
    for path in (decoy, decoy / "new" / "deeper"):
        put(p + "HDF1:FilePath", str(path))
        assert get(p + "HDF1:FilePathExists_RBV") == 0
        assert "symbolic link" in get(p + "HDF1:WriteMessage", as_string=True)
    put(p + "HDF1:CreateDirectory", 0)
    (target / "planted_1.h5").symlink_to(outside / "planted_1.h5")
    put(p + "HDF1:FilePath", str(target))
    put(p + "HDF1:FileName", "planted")
    put(p + "HDF1:FileNumber", 1)
    put(p + "HDF1:FileTemplate", "%s%s_%d.h5")
    put(p + "HDF1:WriteFile", 1)  # no array yet: refused for that
    put(p + "cam1:ImageMode", "Single")
    put(p + "cam1:Acquire", 1)
    put(p + "HDF1:WriteFile", 1)
    assert "symbolic link" in get(p + "HDF1:WriteMessage", as_string=True)
    assert list(outside.iterdir()) == []
    (target / "planted_1.h5").unlink()

    for plugin, ext in (("HDF1:", "h5"), ("TIFF1:", "tif")):
        put(p + plugin + "FilePath", str(target))
        assert get(p + plugin + "FilePathExists_RBV") == 1
        put(p + plugin + "FileName", "race")
        put(p + plugin + "FileTemplate", f"%s%s_%d.{ext}")
        put(p + plugin + "AutoIncrement", "Yes")
    put(p + "HDF1:FileWriteMode", "Single")  # one file per frame, opened per frame
    put(p + "HDF1:AutoSave", "Yes")
    put(p + "TIFF1:FileWriteMode", "Stream")  # one file per frame, until an error ends it
    put(p + "TIFF1:NumCapture", 0)
    put(p + "TIFF1:AutoSave", "Yes")
    for name, value in [("ImageMode", "Continuous"), ("AcquireTime", 0.0002),
                        ("AcquirePeriod", 0.0), ("WaitForPlugins", "No")]:
        put(p + "cam1:" + name, value)

    flipper = Flipper(target, decoy)
    capture_starts = 0
    put(p + "cam1:Acquire", 1, wait=False)
    flipper.start()
    try:
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline:
            # a refused open ends a TIFF Stream capture: start it again, so both writers keep
            # opening files all along
            if epics.caget(p + "TIFF1:Capture_RBV", timeout=2, use_monitor=False) == 0:
                epics.caput(p + "TIFF1:Capture", 1, wait=False)
                capture_starts += 1
            time.sleep(0.02)
    finally:
        flipper.stop.set()
        flipper.join()
        put(p + "cam1:Acquire", 0)
        put(p + "TIFF1:Capture", 0)
    written = [f for f in target.rglob("*") if f.is_file() and f.stat().st_size > 0]
    escaped = sorted(f.name for f in outside.rglob("*"))
    print(f"{flipper.flips} flips, {len(written)} files inside, {len(escaped)} outside, "
          f"TIFF captures started {capture_starts}")
    assert flipper.flips > 1000
    assert len(written) > 20, "the writers hardly wrote: the race was not exercised"
    assert escaped == [], f"{len(escaped)} files written outside the data root: {escaped[:5]}"
    assert ioc.proc.poll() is None
    assert "Traceback" not in ioc.log()


# --- files a PV names --------------------------------------------------------------------------
SECRET = "s3cr3t-Never-Shown"
NOT_XML = (f'# a shell profile\nexport TOKEN="{SECRET}"\neval "$(dircolors -b {SECRET})"\n'
           f"<{SECRET}\n")
VALID = ('<Attributes><Attribute name="G" type="PARAM" source="Gain" datatype="DOUBLE"/>'
         '</Attributes>')


def attributes_file(p: str, value: str) -> tuple[str, str]:
    """Put NDAttributesFile; its status and the status message it left."""
    put(p + "cam1:NDAttributesFile", value)
    return (get(p + "cam1:NDAttributesStatus", as_string=True, use_monitor=False),
            get(p + "cam1:StatusMessage_RBV", as_string=True, use_monitor=False))


def secrets_of(path: str) -> list[str]:
    """Pieces of a file a message must not show (its lines, parts of them)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return []
    pieces = []
    for line in data.replace(b"\0", b"\n").decode(errors="replace").splitlines():
        line = line.strip()
        if len(line) >= 6:
            pieces.append(line[:24])
    return pieces


@pytest.mark.parametrize("with_config", [False, True], ids=["default-config", "config-file"])
def test_attribute_files_only_from_the_configured_folders(start_ioc, tmp_path, with_config):
    """An IOC started in `/` reads no attribute file relative to it, nor outside its folders,
    and says why without quoting what it refused."""
    data = tmp_path / "data"
    data.mkdir()
    config = None
    if with_config:
        config = textwrap.dedent(f"""
            data_roots: ["{data}"]
            drivers:
              - {{type: sim, port: SIM1, prefix: "cam1:",
                 options: {{max_size_x: 16, max_size_y: 16}}}}
            """)
    ioc = start_ioc(config, prefix="PATHS2:" if with_config else "PATHS3:", cwd="/")
    p = ioc.prefix

    refused = ["/etc/shadow", "/proc/self/environ", "etc/shadow", "proc/self/environ",
               "../etc/passwd", "../../../../../../etc/shadow", f"{data}/../../../etc/shadow",
               f"{data}/../ioc.yml", "/root/.bashrc", "/"]
    link = data / "link.xml"
    link.symlink_to("/etc/passwd")
    refused.append(str(link))
    folder_link = data / "etc"
    folder_link.symlink_to("/etc", target_is_directory=True)
    refused.append(f"{folder_link}/passwd")
    if with_config:  # relative names are relative to the config's folder, links refused there
        refused += ["data/link.xml", "data/etc/passwd"]
    for value in refused:
        status, message = attributes_file(p, value)
        assert status == "File not found", (value, status, message)
        for piece in secrets_of(value if value.startswith("/") else "/" + value):
            assert piece not in message, (value, message)

    # a readable file under a data root that is not attribute XML: no piece of it is shown
    if with_config:
        profile = data / "profile"
        profile.write_text(NOT_XML)
        for value in (str(profile), "data/profile"):
            status, message = attributes_file(p, value)
            assert status in ("XML syntax error", "Macro substitution error"), (status, message)
            assert SECRET not in message and "dircolors" not in message, message
        wrong_root = data / "wrong_root.xml"
        wrong_root.write_text(f"<{SECRET}><x/></{SECRET}>")
        status, message = attributes_file(p, str(wrong_root))
        assert status == "XML syntax error" and SECRET not in message, message

        good = data / "attributes.xml"
        good.write_text(VALID)
        assert attributes_file(p, str(good))[0] == "Attributes file OK"
        assert attributes_file(p, "data/attributes.xml")[0] == "Attributes file OK"
        assert attributes_file(p, VALID)[0] == "Attributes file OK"  # inline XML as before

    log = ioc.log()
    assert SECRET not in log and "dircolors" not in log
    assert "Traceback" not in log
    for value in ("/etc/shadow", "/proc/self/environ"):
        for piece in secrets_of(value):
            assert piece not in log


# --- ndflow.safepath itself, without an IOC ----------------------------------------------------
def test_safepath_refuses_what_a_name_check_cannot_see(tmp_path):
    from ndflow import safepath

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    precious = outside / "precious"
    precious.write_text("keep me")
    os.link(precious, root / "a" / "hard")  # a hard link O_NOFOLLOW cannot see
    os.mkfifo(root / "a" / "fifo")  # opening it for reading would block without O_NONBLOCK
    (root / "a" / "big").write_bytes(b"x" * 100)

    def at(text: str) -> safepath.Location:
        return safepath.locate(text, [root])

    with pytest.raises(safepath.PathRefused, match="hard links"):
        safepath.create_file(at(f"{root}/a/hard"))
    assert precious.read_text() == "keep me"  # refused before any truncation
    with pytest.raises(safepath.PathRefused, match="not a regular file"):
        safepath.create_file(at(f"{root}/a/fifo"))
    with pytest.raises(safepath.PathRefused, match="not a regular file"):
        safepath.read_file(at(f"{root}/a/fifo"), 1000)
    with pytest.raises(safepath.PathRefused, match="larger than"):
        safepath.read_file(at(f"{root}/a/big"), 99)
    with pytest.raises(safepath.PathRefused, match="outside"):
        at(f"{root}/a/../../outside/x")
    assert at(f"{root}/a/./b/../c").parts == ("a", "c")  # collapsed as text, walked from root
    # folders are created only from `create_from` on, and never through a link
    with pytest.raises(FileNotFoundError):
        safepath.open_folder(at(f"{root}/x/y"), create_from=1)
    os.close(safepath.open_folder(at(f"{root}/x/y"), create_from=0))
    assert (root / "x" / "y").is_dir()
    (root / "x" / "out").symlink_to(outside, target_is_directory=True)
    with pytest.raises(safepath.PathRefused, match="symbolic link"):
        safepath.open_folder(at(f"{root}/x/out/new"), create_from=0)
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]
