"""Vetoes every frame whose first pixel is a multiple of `every` (LinearRamp: frame n's first
pixel is n - 1), publishing its output all the same: the algorithm side of vetoes."""

from ndflow.algorithm import Algorithm, Input, Output, Veto


class VetoEvery(Algorithm):
    every = Input(4, low=1, doc="veto frames whose first pixel is a multiple of this")
    corner = Output(float, doc="the first pixel of the last frame")

    def process(self, image, params, attributes, metadata):
        corner = float(image.reshape(-1)[0])
        if corner % params.every == 0:
            return Veto(f"corner {corner:g} is a multiple of {params.every}",
                        outputs={"corner": corner})
        return {"corner": corner}
