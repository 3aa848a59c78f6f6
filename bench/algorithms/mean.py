"""The trivial algorithm the bench times: the frame mean."""

from ndflow.algorithm import Algorithm, Output


class Mean(Algorithm):
    mean = Output(float)

    def process(self, image, params, attributes, metadata):
        return {"mean": float(image.mean())}
