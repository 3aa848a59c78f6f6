"""One FITS file read into an image and NDAttributes (astropy.io.fits), or a reason it cannot be.

astropy applies BSCALE/BZERO, so an unsigned 16-bit camera frame (BITPIX 16, BZERO 32768) comes
out as uint16 and a scaled integer image as float. Header cards become attributes with their
types and comments; DATE-OBS becomes the frame's time. Everything a bad file can do (empty,
truncated, not FITS, a table instead of an image, a missing HDU) ends as `FITSError` with a
one-line message naming the file, never an astropy traceback.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from astropy.io import fits

from ndflow.reasons import reason

SKIPPED_CARDS = {"", "COMMENT", "HISTORY", "END"}
CAMERA_FOLDER = re.compile(r"cam(?:era)?[_-]?(\d+)$", re.IGNORECASE)


class FITSError(Exception):
    """A file that cannot give a frame; the message names the file and the cause."""


@dataclass
class FITSFrame:
    data: np.ndarray  # 2-D, as astropy gave it: possibly big-endian (copy it once, converting)
    header: dict[str, tuple[Any, str]] = field(default_factory=dict)  # name -> (value, comment)
    hdu: str = ""  # "0" / "SCI" / "1 (COMPRESSED_IMAGE)"
    time: float | None = None  # DATE-OBS as POSIX seconds
    camera: str = ""

    @property
    def dtype(self) -> np.dtype:
        """The pixels' type in native byte order: what the frame will hold."""
        return self.data.dtype.newbyteorder("=")


def read_fits(path: Path, hdu: str = "auto", camera_keyword: str = "CAMERA",
              fileobj: BinaryIO | None = None) -> FITSFrame:
    """The image of `hdu` ("auto": the first HDU holding image data; a number; an EXTNAME).

    `fileobj`: the file, already open (the driver opens files in a watched folder through
    `ndflow.safepath`, with links refused); `path` then only names it (messages, the camera
    folder). Without it the file is opened by `path` (files given on replay's command line)."""
    name = path.name
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*truncated.*")
            warnings.simplefilter("ignore", category=fits.verify.VerifyWarning)
            source = path if fileobj is None else fileobj
            with fits.open(source, memmap=False, lazy_load_hdus=False) as hdul:
                index, chosen = _choose(hdul, hdu, name)
                data = chosen.data
                header = chosen.header
                if index != 0 and isinstance(chosen, (fits.ImageHDU, fits.CompImageHDU)):
                    header = _merged(hdul[0].header, header)
                cards = _cards(header)
    except FITSError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError, Warning) as exc:
        raise FITSError(f"{name}: {_reason(exc)}") from None
    if data is None or data.ndim != 2:
        shape = "no data" if data is None else f"{data.ndim}-D data {data.shape}"
        raise FITSError(f"{name}: HDU {hdu} has {shape}; a 2-D image is needed")
    label = f"{index}" + (f" ({chosen.name})" if chosen.name not in ("", "PRIMARY") else "")
    return FITSFrame(data, cards, label, _date_obs(cards), _camera(cards, path, camera_keyword))


def _choose(hdul: fits.HDUList, hdu: str, name: str) -> tuple[int, Any]:
    if hdu == "auto":
        for i, h in enumerate(hdul):
            if getattr(h, "is_image", False) and h.header.get("NAXIS", 0) >= 2:
                return i, h
        kinds = ", ".join(type(h).__name__ for h in hdul)
        raise FITSError(f"{name}: no image HDU (has {kinds})")
    try:
        index = int(hdu) if hdu.strip().lstrip("-").isdigit() else hdul.index_of(hdu)
        chosen = hdul[index]
    except (KeyError, IndexError):
        raise FITSError(f"{name}: no HDU {hdu!r} ({len(hdul)} HDUs)") from None
    if not getattr(chosen, "is_image", False):
        raise FITSError(f"{name}: HDU {hdu} is a {type(chosen).__name__}, not an image")
    return index, chosen


def _merged(primary: fits.Header, extension: fits.Header) -> fits.Header:
    """Observation keywords often live in the primary header and the pixels in an extension;
    the extension's own cards win."""
    merged = primary.copy()
    merged.update(extension)
    return merged


def _cards(header: fits.Header) -> dict[str, tuple[Any, str]]:
    cards: dict[str, tuple[Any, str]] = {}
    for card in header.cards:
        key = card.keyword
        if key in SKIPPED_CARDS or key in cards:
            continue
        value = card.value
        if isinstance(value, bool):
            value = int(value)  # FITS T/F: attributes hold numbers or text
        elif isinstance(value, (np.integer, np.floating)):
            value = value.item()
        elif not isinstance(value, (int, float, str)):
            value = str(value)
        cards[key] = (value, card.comment or "")
    return cards


def _date_obs(cards: dict[str, tuple[Any, str]]) -> float | None:
    text = cards.get("DATE-OBS", ("", ""))[0]
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)  # FITS times are UTC unless TIMESYS says not
    return when.timestamp()


def _camera(cards: dict[str, tuple[Any, str]], path: Path, keyword: str) -> str:
    """The camera id: the header keyword, else a `camNN` folder the file sits in."""
    if keyword in cards:
        return str(cards[keyword][0])
    match = CAMERA_FOLDER.search(path.parent.name)
    return str(int(match.group(1))) if match else ""


def _reason(exc: BaseException) -> str:
    """The core's one-line reason, trimmed of astropy's advice and 200 characters at most."""
    text = reason(exc).split(". ")[0]  # astropy adds advice ("try with ignore_missing_simple=True")
    if "truncated" in text:
        return "truncated (" + text.split(":", 1)[-1].strip() + ")"
    return text[:200]
