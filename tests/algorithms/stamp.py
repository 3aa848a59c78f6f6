"""Returns an output image filled with the frame's unique id, so a later stage can tell whether
the image it got is the one made for its frame."""

import numpy as np

from ndflow.algorithm import Algorithm, Result


class Stamp(Algorithm):
    def process(self, image, params, attributes, metadata):
        return Result(image=np.full((512, 512), float(metadata.unique_id)))
