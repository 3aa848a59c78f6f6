"""Counts frames whose pixels are not all their own unique id (see stamp.py)."""

import numpy as np

from ndflow.algorithm import Algorithm, Output


class CheckStamp(Algorithm):
    checked = Output(int)
    torn = Output(int, doc="frames holding another frame's pixels")

    def start(self):
        self.checked = self.torn = 0

    def process(self, image, params, attributes, metadata):
        self.checked += 1
        self.torn += int(not np.all(image == metadata.unique_id))
        return {"checked": self.checked, "torn": self.torn}
