"""Spends `seconds` (3 s by default) in every process() call: a plugin that is busy for a long
time, to check that Channel Access stays responsive meanwhile (tests/test_responsive.py)."""

import time

from ndflow.algorithm import Algorithm, Input, Output


class SlowProcess(Algorithm):
    seconds = Input(3.0, doc="time spent in each process() call")
    calls = Output(int, doc="process() calls finished")

    def start(self):
        self.count = 0

    def process(self, image, params, attributes, metadata):
        time.sleep(params.seconds)
        self.count += 1
        return {"calls": self.count}
