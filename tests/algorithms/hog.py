"""Memory on demand, to test the child's resident-memory limit: `Grow` writes 32 MB blocks
until it holds `Megabytes` (a leak); `Reserve` takes 64 GB of address space and an untouched
8 GB numpy array (what a GPU library's start-up does), which must not count."""

import mmap
import time

import numpy as np

from ndflow.algorithm import Algorithm, Input, Output

BLOCK = 32 * 2**20


class Hog(Algorithm):
    mode = Input("None", choices=("None", "Grow", "Reserve"))
    megabytes = Input(2000, low=0)
    held = Output(float, units="MB", doc="memory held by this frame's process()")
    mean = Output(float)

    def process(self, image, params, attributes, metadata):
        held = []
        if params.mode == "Grow":
            for _ in range(int(params.megabytes * 2**20) // BLOCK):
                held.append(np.ones(BLOCK, np.uint8))
                time.sleep(0.002)
        elif params.mode == "Reserve":
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0x4000)
            held.append(mmap.mmap(-1, 64 * 2**30, flags=flags, prot=mmap.PROT_READ))
            held.append(np.empty(8 * 2**30, np.uint8))
        return {"held": sum(len(h) for h in held) / 2**20, "mean": float(image.mean())}
