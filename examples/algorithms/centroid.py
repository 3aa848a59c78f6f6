"""Centroid and size of the pixels above a threshold: a beam-position monitor in a few lines."""

import numpy as np

from ndflow.algorithm import Alarm, Algorithm, Input, Output


class Centroid(Algorithm):
    threshold = Input(10.0, low=0, units="counts", doc="pixels at or below are ignored")
    subtract = Input(False, doc="subtract the threshold before weighting")

    count = Output(int, units="px", doc="pixels above the threshold")
    total = Output(float, units="counts", doc="sum above the threshold")
    centroid_x = Output(float, units="px", precision=2, doc="intensity-weighted mean x")
    centroid_y = Output(float, units="px", precision=2, doc="intensity-weighted mean y")
    sigma_x = Output(float, units="px", precision=2, doc="rms width in x",
                     alarm=Alarm(high=200.0, hihi=400.0))
    sigma_y = Output(float, units="px", precision=2, doc="rms width in y",
                     alarm=Alarm(high=200.0, hihi=400.0))

    def process(self, image, params, attributes, metadata):
        frame = image if image.ndim == 2 else image.mean(axis=-1 if image.shape[-1] == 3 else 0)
        weights = frame.astype(np.float64)
        above = weights > params.threshold
        if params.subtract:
            weights = weights - params.threshold
        weights = np.where(above, weights, 0.0)
        total = weights.sum()
        if total <= 0:
            return {"count": 0, "total": 0.0, "centroid_x": 0.0, "centroid_y": 0.0,
                    "sigma_x": 0.0, "sigma_y": 0.0}
        profile_x = weights.sum(axis=0)
        profile_y = weights.sum(axis=1)
        x = np.arange(profile_x.size)
        y = np.arange(profile_y.size)
        cx = (profile_x * x).sum() / total
        cy = (profile_y * y).sum() / total
        sx = np.sqrt((profile_x * (x - cx) ** 2).sum() / total)
        sy = np.sqrt((profile_y * (y - cy) ** 2).sum() / total)
        return {"count": int(above.sum()), "total": total, "centroid_x": cx, "centroid_y": cy,
                "sigma_x": sx, "sigma_y": sy}
