"""Takes longer on some frames than on others, so two workers finish out of order."""

import os
import time

from ndflow.algorithm import Algorithm, Output, Result


class SlowMean(Algorithm):
    mean = Output(float)

    def process(self, image, params, attributes, metadata):
        time.sleep(0.03 if metadata.unique_id % 2 else 0.001)
        return Result(outputs={"mean": float(image.mean())},
                      attributes={"WorkerPid": os.getpid()})
