"""Misbehaves on demand, so tests can check that the IOC survives each kind of failure."""

import ctypes
import os
import time

import numpy as np

from ndflow.algorithm import Algorithm, Input, Output

FAULTS = ("None", "Exception", "Exit", "Segfault", "Hang", "Memory", "Write")


class Faulty(Algorithm):
    fault = Input("None", choices=FAULTS, doc="what process() does wrong")
    mean = Output(float, doc="frame mean when nothing goes wrong")
    pid = Output(int, doc="child process id")

    def process(self, image, params, attributes, metadata):
        fault = params.fault
        if fault == "Exception":
            raise ValueError(f"deliberate failure on frame {metadata.unique_id}")
        if fault == "Exit":
            os._exit(1)
        if fault == "Segfault":
            ctypes.string_at(0)
        if fault == "Hang":
            while True:
                time.sleep(0.01)
        if fault == "Write":  # the frame is shared with every other plugin: must not work
            image.flags.writeable = True
            image[...] = 0
        if fault == "Memory":
            hog = np.ones(2**31, dtype=np.uint8)  # 2 GB, past the test's limit
            return {"mean": float(hog[0])}
        return {"mean": float(image.mean()), "pid": os.getpid()}
