"""Bitmap fonts for the Text overlay (NDPluginOverlay's Font choices 6x13, 6x13 Bold, 9x15,
9x15 Bold), numpy only.

ADCore draws text with bitmaps compiled into the plugin, made from the X11 "misc-fixed" fonts of
the same names. These are the same fonts, which are in the public domain ("Public domain font.
Share and enjoy.", font-misc-misc/COPYING in X.Org's xfonts-base): the glyphs of characters 32
to 126 of 6x13, 6x13B, 9x15 and 9x15B, each rendered into its full character cell (the font's
width x height, ascent on top), one row per 1 (6 wide) or 2 (9 wide) bytes, most significant
bit first, zlib-compressed and base64-encoded. They are stored, not read from the system, so an
IOC draws the same text on every machine.
"""

from __future__ import annotations

import base64
import functools
import zlib

import numpy as np

FIRST, LAST = 32, 126  # the printable ASCII characters the fonts hold

#: Font choice index -> (name, cell width, cell height, data)
_FONTS: tuple[tuple[str, int, int, str], ...] = (
    ("6x13", 6, 13,
     "eNplVK16wzAMDDQ0HDQcDBw0DNQjBA4KBhoaBgYGGu4RBgsH9xiBhtOvm23qlzTSSerJp3SafllSmxI7AHCDADp9NJK2"
     "88TX10vSlgYxZWi7QPk883ns79ZtlMeUMltKkZLozkYxTmvY0p1Dv9WxzZLG1qc/fJEzQ6BWOZciIahsIC3SespAUoe1"
     "Bsor4nR6xBAqCrk4A+w9RkFK+Xg4grWUi9qh1egY1q2iI/yweY3RUm72rSPIz+cUw3Mcm0iijD6JmgrkHK19lG0M1+li"
     "51qWBem6nCiZMmBkcYTmKRdd/e6UUXPYCNU6S2u0RRDkTbSK+6pp+/l57ppWzLoi3615g/p4tHYc1q2qKTd6uDEQaxgc"
     "8dbMbejTky+mER3dRGqAJ9LIQB0KAxgddrxBt3Vh1pjdUOahBY0xMBuMbqgHP/036pDinxiGrR7vdjo8Ur0cqa5PCJTE"
     "KzOQbsi85HxlW7GxWIwVXks/XlqNdegzxWkWgVghSlOBGFjvMpJ98en4ILduJoSnuUTibLrawWpcOalZo9Uo6WU2hJvp"
     "GagDkIbj+rBDmoxzlRJ/g7q/py9M/5NvL8+/J5FRgwLLn9DuAvwARhAeEA=="),
    ("6x13B", 6, 13,
     "eNplVLt5xCAMZgAGYAxKigyQEVJSpqBwqcJDZCQGYAAKFzeAC5cuVEQvwLnoPu4Qv6T79QDn/khUcZGV3vsDAkD6gNnB"
     "BR8gVq4ghJgBzThfV8a+W7TpHmLMLDEGsqFvFjoTsFHktjjgw48lmZlz6N74CgfvKVTOtepRY1FycbskIfEjwJNdFQVp"
     "C943SSiEBF8dQxCk1vscSMqsNVXQB03DojVZphw70dgWq2jl0Y2mIH+fY/ArHctIThldRK0LHBrxrvtMDmmxcpdSgNat"
     "ZpVF6TBSBkL51JsWPpU6fQ5LoVlkCQ02CIJ8eJFh1q/X1dWsmqAiiDNAO0/E47BoTUW50ebBQATBD2SEZm6zPxjHYBrR"
     "GU02AAtBJqEKHQO0pYwAaOPCrCEPAcmHBjQEz2wgDAEtvPsvyKP8dgZ+b0ex6nQanXPcIk5JWVM1C9VGzQShvui8lZzv"
     "bCNGsve+VWAvi6b5UCLb7A+NbWKeZKpm0iBGtmcbucKzOny9Z7TRCFjI2a1DjogexXtvyOic+GzBfJR0SYZwsJmcdChO"
     "hRh8DoV6MusqLtZvh+OeJn4yXnzn0nqepI0v+smJXpL4Iu37/hkN+AWT/IfU"),
    ("9x15", 9, 15,
     "eNqNVktv00AQHrtWcREqbtRDDlWVRkVCPTW3CCWLbUKokXgUVIkTIuIP5MQpyvafw3ifM7sbl/nk53hmZ/ebmTXAsJQM"
     "9o2XkcJhuUbsyZn7FtDBHbyGC3gOJ3gviO8r+Ia4VuON4BWiJba3aNfjFmbwEVZ4zKKo01IoXUXQPxdGa5889Nfecwc3"
     "GO8NXsuBFZODMWh5gdAjcJHwtPS2XjLIETbWCaIm2guYQkMwxTc03jEycEdYpuMLZaF9V8qvZJFmSneK1x4Nfu8lh2Pk"
     "dYTjtfhlrkBta8RP2CRtL9VYWq+jFtG4OeGniuY7dfPm8xXG3ztYqnFzWAysLl/nlNYz6FdpovKoYPPl7IYcewvvJYw5"
     "cxwDyxmt/QL38B0+qVUTjN9zx780Vy875KbBQ1/1HfdcE3AWrI0Ft5XGZues5aC2To77IcF+E8yGz0gEPatkti8fc6Bo"
     "Gfv9HFZYC1v4iueVmp+XOoIMovoND4gOEUbVP22QoQ7eY+bFMTcBaMx7825/cK087lUXLeAosrXzicetYY6VmiWqrIwQ"
     "s5CO2XaaHucKKdvO4AG/4tqpsvC5m9bGUUlXJZXpIJL0lCqBS8KvrVxbiZnTLdieYLGIquz/5S/ZcYonvxaqV701fSvM"
     "Sd8lN3gf2zbJ+tV9d+nykXumGSKjrnIKZ4h+/XZuJUNZYr61qsJq40ckY+b8jtV5fqB+j83otIJbV8V2lmv4Ab/wWDPP"
     "88HOoOWPy8kuweahmONKFAO2PUdhFXMWNDNePuPfzZXKzgnbFyi/ItpDQbGyd/yc4bqF0hLE7NsaDuvXa1P1a7W6StN1"
     "4Uddw5uoD0tSw75+nxnWCsyRsdkJS3yb+lMNe8PWPFVqz67M09b5nuEs1snK+wdubpH4"),
    ("9x15B", 9, 15,
     "eNqNVsFq20AQHRCYQo1z9cH4G0QDRRBHhwZ66kcIDEqhveXi0Eb6q56VCORLia+BlF4K6bXQSw/G6uzMrrQzWjmZhyx5"
     "RzM7M29nVwDPyVwB6HLyljAuRlt6v768ghQ+wUfY4P0EXuNzimNOLuAJ8YHmfAOXiDvPNoHPiA3EcA07aOAevgRiDskE"
     "pqSLLczzFEdZYvpn/jOm9HY8yGqB+SyCmfPM7ZEInCwQ7F9KC/ACVlaeXWRj5bwyRKXezaG2yIWl0SZYR5/hwtOyZWS9"
     "G99+dF+x8ka3wCtCNDjiV3oGS6xRjuOtrWcvB4yxgh/IsbHkuOS8d1ZfD7Qt2Th2dKU55rzLeujZjF7CGfq4UFpd3bmq"
     "lhyTDPY1yuw6mgSYa4Mc9xa9l15SWCMcCxDMdwePiHus2RrfD7Pf2nsve+Smxovv/CTnvSWeDG6VZ2fjIG1LqkOGqymz"
     "KEUV2Oe+816peXlsS57lvLXKRmZUDHYsfz0vu842eI97SCI8N/AdHuAP4gGfGuE5G6AUtr8xokfCMKoafsFfhNHuMKut"
     "0Pr9OVyxBzt6CNbKtzW+czgP2v6z+cha1eStoH4yXVgIjuaB3V+zEI7ZjeU0vhqx5Wq1WLlaaXNr47ILa4dRld3O4Dqx"
     "9FZVHEC/sqquc10nRp7tJIBUddk7eLm04sR5TlLq/xJz34qTrup2Ua7oEz6HbPk92UfM+RnuhHW3I2rh+rcD2yWcIkz9"
     "9l0ltdxgrA2dCRWtNLe6dMySX+YzGenfiDg5sbEbrAmp16E5fRls8DdHjf/NcGxnYPlm1yRDy1jMuhNDZ4rkSHexZCGy"
     "eTr5CVferqOFu7gY9C8ofk6RNS19NiH2XQ+vAqcgiA7OA1ruUq7K8Xn1l0PhdXCf0azjzX23GcxGv1T9nSGhc3ranbCM"
     "fu+/orMzJP8B7elXJQ=="),
)


@functools.lru_cache(maxsize=None)
def glyphs(font: int) -> np.ndarray:
    """The bitmaps of font choice `font` as a read-only bool array (95, height, width): glyph
    `ord(c) - 32`, row 0 at the top of the cell. Decoded once per font."""
    _, width, height, data = _FONTS[font]
    raw = np.frombuffer(zlib.decompress(base64.b64decode(data)), dtype=np.uint8)
    rows = raw.reshape(LAST - FIRST + 1, height, -1)
    bits = np.unpackbits(rows, axis=2)[:, :, :width].astype(bool)
    bits.flags.writeable = False
    return bits


def cell_size(font: int) -> tuple[int, int]:
    """(width, height) of one character cell of font choice `font`."""
    return _FONTS[font][1], _FONTS[font][2]


NAMES = tuple(f[0] for f in _FONTS)
