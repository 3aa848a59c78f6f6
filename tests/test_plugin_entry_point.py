"""Issue 17, acceptance 3: a new plugin type added from outside ndflow, through an entry point of
a package that is only on the IOC process's PYTHONPATH (a module plus its .dist-info with
entry_points.txt, as pip would install it). Its result parameters become columns of replay's
table and its screen is generated, with nothing in ndflow naming it."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from conftest import NDFLOW

pytestmark = pytest.mark.timeout(120)

PLUGIN = '''"""A third-party plugin: the brightest pixel of each frame, its value and flat index."""
from ndflow.params import R, float_param, int_param
from ndflow.plugin import Plugin


class PeakPlugin(Plugin):
    kind = "peak"
    screen = "NDPeak"
    plugin_type = "NDPluginPeak"
    PARAMS = Plugin.PARAMS + ((
        float_param("PeakValue_RBV", access=R, group="Peak", doc="brightest pixel"),
        int_param("PeakIndex_RBV", access=R, group="Peak", doc="its flat index")),)

    def process(self, array):
        data = array.data
        self.set("PeakValue_RBV", float(data.max()))
        self.set("PeakIndex_RBV", int(data.argmax()))
        return array

    def result_params(self):
        return ["PeakValue_RBV", "PeakIndex_RBV"]
'''

CONFIG = '''prefix: "EP:"
drivers:
  - {type: fits, port: FITS1, prefix: "fits1:"}
plugins:
  - {type: peak, port: PEAK1, prefix: "Peak1:", input: FITS1}
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The installed third-party package: its module and its .dist-info, nothing else."""
    where = tmp_path_factory.mktemp("site")
    (where / "extra_peak.py").write_text(PLUGIN)
    info = where / "extra_peak-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-peak\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ndflow.plugins]\npeak = extra_peak:PeakPlugin\n")
    return where


def ndflow(args: list[str], cwd: Path, site: Path | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(NDFLOW + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=90)


def frames(folder: Path) -> list[tuple[Path, float, int]]:
    """(file, brightest value, its flat index) for three small FITS frames."""
    out = []
    for i in range(3):
        data = np.zeros((8, 10), np.uint16)
        data[i + 1, 2 * i] = 100 + 7 * i
        path = folder / f"frame{i}.fits"
        fits.writeto(path, data)
        out.append((path, 100.0 + 7 * i, (i + 1) * 10 + 2 * i))
    return out


def test_replay_tables_the_new_plugins_results(tmp_path, site):
    (tmp_path / "ioc.yml").write_text(CONFIG)
    files = frames(tmp_path)
    done = ndflow(["replay", "ioc.yml", *(str(f) for f, _, _ in files), "--table", "t.csv"],
                  tmp_path, site)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["Peak1:PeakValue_RBV"]) for r in rows] == [v for _, v, _ in files]
    assert [int(r["Peak1:PeakIndex_RBV"]) for r in rows] == [i for _, _, i in files]


def test_the_new_plugin_gets_its_screen(tmp_path, site):
    (tmp_path / "ioc.yml").write_text(CONFIG)
    done = ndflow(["screens", "ioc.yml", "--out", "screens"], tmp_path, site)
    assert done.returncode == 0, done.stderr
    screen = (tmp_path / "screens" / "NDPeak.bob").read_text()
    assert "$(P)$(R)PeakValue_RBV" in screen and "$(P)$(R)PeakIndex_RBV" in screen
    top = (tmp_path / "screens" / "ndflow.bob").read_text()
    assert "NDPeak.bob" in top and "Peak1:" in top


def test_without_the_package_the_type_is_unknown(tmp_path):
    """The entry point is what makes `peak` a plugin type: the same config without the
    package on the path is a one-line config error."""
    (tmp_path / "ioc.yml").write_text(CONFIG)
    done = ndflow(["screens", "ioc.yml", "--out", "screens"], tmp_path, None)
    assert done.returncode != 0
    assert "peak" in done.stderr and "Traceback" not in done.stderr
