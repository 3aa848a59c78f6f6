"""An algorithm with its own multiprocessing pool: `Pool` computes the frame mean in two
workers and keeps them; `Hang` starts a fresh pool with busy workers and never returns (so the
per-frame timeout must end the child and every worker it started); `Orphan` also starts a
process that sleeps for an hour and is never joined (so stopping the IOC must end it)."""

import multiprocessing
import os
import time

import numpy as np

from ndflow.algorithm import Algorithm, Input, Output


def mean(rows):
    return float(np.mean(rows)), os.getpid()


class PoolHang(Algorithm):
    mode = Input("Pool", choices=("Pool", "Hang", "Orphan"))
    mean = Output(float)
    worker_pids = Output(int, length=8, doc="pids of the pool's workers")

    def start(self):
        self.pool = None

    def process(self, image, params, attributes, metadata):
        if params.mode == "Hang":
            pool = multiprocessing.Pool(2)
            pool.map_async(time.sleep, [3600] * 4)  # both workers busy for an hour
            while True:
                time.sleep(0.01)
        if params.mode == "Orphan":
            multiprocessing.Process(target=time.sleep, args=(3600,), daemon=False).start()
        if self.pool is None:
            self.pool = multiprocessing.Pool(2)
        halves = self.pool.map(mean, [image[: image.shape[0] // 2], image[image.shape[0] // 2:]])
        return {"mean": (halves[0][0] + halves[1][0]) / 2,
                "worker_pids": sorted({pid for _, pid in halves})}

    def stop(self):
        if self.pool is not None:
            self.pool.terminate()
