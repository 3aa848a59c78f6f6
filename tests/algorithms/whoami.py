"""Reports which interpreter runs it, for the test that runs an algorithm in another venv."""

import importlib.util
import sys

from ndflow.algorithm import Algorithm, Output


class WhoAmI(Algorithm):
    prefix = Output(str, length=200, doc="sys.prefix of the child")
    has_scipy = Output(bool)
    mean = Output(float)

    def process(self, image, params, attributes, metadata):
        return {"prefix": sys.prefix, "has_scipy": importlib.util.find_spec("scipy") is not None,
                "mean": float(image.mean())}
