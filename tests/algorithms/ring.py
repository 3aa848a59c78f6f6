"""Replaces each frame by a ring with a Gaussian profile, a test image with a known radius:

    r = hypot(x + 0.5 - CenterX, y + 0.5 - CenterY)   (pixel centres; pyFAI's convention)
    image = Height * exp(-0.5 * ((r - Radius) / Width)**2) + Background   (float32)
"""

import numpy as np

from ndflow.algorithm import Algorithm, Input, Result


class Ring(Algorithm):
    center_x = Input(150.0, units="px")
    center_y = Input(120.0, units="px")
    radius = Input(80.0, units="px")
    width = Input(1.5, low=0.1, units="px")
    height = Input(1000.0)
    background = Input(10.0)

    def process(self, image, params, attributes, metadata):
        ny, nx = image.shape[:2]
        y, x = np.mgrid[0:ny, 0:nx]
        r = np.hypot(x + 0.5 - params.center_x, y + 0.5 - params.center_y)
        ring = params.height * np.exp(-0.5 * ((r - params.radius) / params.width) ** 2)
        return Result(image=(ring + params.background).astype(np.float32))
