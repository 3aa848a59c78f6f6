"""Batch replay speed: files/s of `ndflow replay` (FITS driver -> focus.py in its own process ->
field.py, the NEOSTED example config) against the same work done bare in one process (astropy
read + Focus.process, no IOC) on the same synthetic star-field files, in the same run.

The replay pays for what the live IOC does per file: the Acquire put path, the shared-memory
hand-over to two algorithm processes, waiting for the plugins, and the attributes. IOC start-up
(child processes loading scipy) is timed separately.

Prints one JSON object per measurement and a summary line last:
    .venv/bin/python bench/fits_replay.py [--files N] [--size 512]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from ndflow.algorithm import Dimension, FrameInfo, Input, Params
from ndflow.config import load_config
from ndflow.replay import replay

REPO = Path(__file__).resolve().parent.parent
NEOSTED = REPO / "examples" / "neosted"
sys.path.insert(0, str(NEOSTED))
import starfield  # noqa: E402


def bare(files: list[Path]) -> tuple[float, list[float]]:
    """astropy + the algorithm class in this process: the floor replay is measured against."""
    spec = importlib.util.spec_from_file_location("focus", REPO / "examples" / "algorithms" /
                                                  "focus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    focus = module.Focus()
    params = Params({d.attr: d.default for d in module.Focus.declarations()
                     if isinstance(d, Input)})
    hfd = []
    begun = time.perf_counter()
    for path in files:
        with fits.open(path, memmap=False) as hdul:
            image, header = hdul[0].data, hdul[0].header
            attributes = {k: v for k, v in header.items() if k not in ("COMMENT", "HISTORY", "")}
        info = FrameInfo(unique_id=1, timestamp=0.0, epics_ts=(0, 0),
                         dims=(Dimension(image.shape[1]), Dimension(image.shape[0])),
                         dtype=image.dtype, color_mode="Mono", transform=np.eye(3))
        hfd.append(focus.process(image, params, attributes, info).outputs["hfd"])
    return time.perf_counter() - begun, hfd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "cam01").mkdir()
        files = [starfield.write_starfield(folder / "cam01" / f"f{i:04d}.fits", camera=1,
                                           defocus=(i % 7), seed=i, frame=i,
                                           shape=(args.size, args.size))
                 for i in range(args.files)]
        bare_s, bare_hfd = bare(files)
        print(json.dumps({"case": "bare astropy + Focus.process", "files": len(files),
                          "seconds": round(bare_s, 3),
                          "files_per_s": round(len(files) / bare_s, 1)}))
        config, lines = load_config(str(NEOSTED / "neosted.yml"))
        begun = time.perf_counter()
        summary = replay(config, files, lines)
        total = time.perf_counter() - begun
        hfd = [row["Focus:Hfd_RBV"] for row in summary.rows]
        same = bool(np.allclose(hfd, bare_hfd, equal_nan=True))
        print(json.dumps({"case": "ndflow replay (FITS -> focus.py -> field.py)",
                          "files": summary.files, "seconds": round(summary.seconds, 3),
                          "files_per_s": round(summary.files / summary.seconds, 1),
                          "startup_s": round(total - summary.seconds, 2),
                          "same_hfd_as_bare": same}))
        print(json.dumps({"summary": "fits_replay", "size": args.size, "files": len(files),
                          "replay_vs_bare": round(bare_s / summary.seconds, 2),
                          "same_results": same}))


if __name__ == "__main__":
    main()
