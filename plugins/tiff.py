"""NDFileTIFF (`TIFF1:`): one TIFF file per array, written with tifffile.

As in ADCore, every mode writes one file per array: Single per array (AutoSave) or at WriteFile,
Capture at the end for each held array, Stream as each arrives. FileNumber advances per file.
Mono arrays are written as 2-D images and RGB1 as interleaved RGB. Other colour layouts are
written as their raw 3-D stacks. NDAttributes go in private ASCII tags from 65010 upwards, one
"name:value" per tag, as NDFileTIFF does. The unique id and timestamp go in tags 65000-65003.
Any TIFF reader opens the files.
"""

from __future__ import annotations

import numpy as np
import tifffile

from ndflow import __version__
from ndflow.ndarray import NDArray
from ndflow.params import RW, enum_param
from ndflow.plugins.file_writer import FileWriter, OneArrayFileWriter

TAG_UNIQUE_ID, TAG_TIMESTAMP, TAG_EPICS_SEC, TAG_EPICS_NSEC = 65000, 65001, 65002, 65003
TAG_FIRST_ATTRIBUTE = 65010
RGB1 = 2


class TIFF(OneArrayFileWriter):
    screen = "NDFileTIFF"
    kind = "tiff"
    plugin_type = "NDFileTIFF"
    PARAMS = (*FileWriter.PARAMS, (
        enum_param("FileFormat", ("TIFF", "Invalid"), 0, RW, rbv_choices=("TIFF", "Undefined"),
                   group="File"),))
    extension = ".tif"

    def write_array(self, array: NDArray) -> None:
        assert self._fh is not None
        data = array.data
        photometric = "minisblack"
        if array.color_mode == RGB1 and data.ndim == 3 and data.shape[-1] == 3:
            photometric = "rgb"
        tags = [(TAG_UNIQUE_ID, "i", 1, array.unique_id, True),
                (TAG_TIMESTAMP, "d", 1, array.timestamp, True),
                (TAG_EPICS_SEC, "I", 1, array.epics_ts[0], True),
                (TAG_EPICS_NSEC, "I", 1, array.epics_ts[1], True)]
        for i, attr in enumerate(array.attributes.values()):
            tags.append((TAG_FIRST_ATTRIBUTE + i, "s", 0, f"{attr.name}:{attr.value}", True))
        tifffile.imwrite(self._fh, np.ascontiguousarray(data), photometric=photometric,
                         software=f"ndflow {__version__}", extratags=tags,
                         description=f"NDArray {array.unique_id}", metadata=None)
