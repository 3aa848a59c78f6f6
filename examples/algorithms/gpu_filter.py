"""Gaussian smoothing on a GPU with CuPy when one is present, on the CPU with scipy otherwise.

The same code path either way: `xp` is cupy or numpy and `ndi` is cupyx.scipy.ndimage or
scipy.ndimage, which share their API. Per frame (RGB1 frames keep their colour axis unblurred):

    out = ndi.gaussian_filter(frame.astype(float32), sigma, mode="nearest", truncate=4.0)

sent on as a float32 image (on a GPU: copied to the device, filtered, copied back).
`Backend` chooses: Auto (the GPU if there is one), CPU, or GPU (a warning, and the CPU, when
there is none). `BackendUsed` says which ran this frame ("numpy" or "cupy"), `Device` which
device ("CPU", or the GPU's name) and `Peak` is the largest value of the smoothed frame.

CuPy is never required: `import cupy` is tried once, when the file loads, and any failure (not
installed, no CUDA driver, no device) leaves the CPU path. CUDA reserves tens of GB of address
space when it starts; the child's memory limit (`memory_mb`) counts resident memory only, so that
reservation is not refused (device memory is the GPU's own and is not counted either).
"""

import numpy as np
import scipy.ndimage

from ndflow.algorithm import Algorithm, Input, Output, Result, Status


def find_gpu():
    """(cupy, cupyx.scipy.ndimage, device name), or None when there is no usable GPU."""
    try:
        import cupy
        import cupyx.scipy.ndimage
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return cupy, cupyx.scipy.ndimage, name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # ImportError, CUDARuntimeError (no driver/device), ...: the CPU it is
        return None


GPU = find_gpu()


def smooth(frame, sigma, xp, ndi):
    """The formula above with the array module `xp` and its ndimage `ndi`; returns numpy."""
    data = xp.asarray(frame, dtype=xp.float32)
    sigmas = (sigma, sigma, 0.0) if data.ndim == 3 else sigma  # RGB: no blur across colours
    out = ndi.gaussian_filter(data, sigmas, mode="nearest", truncate=4.0)
    return out.get() if xp is not np else out


class GpuFilter(Algorithm):
    backend = Input("Auto", choices=("Auto", "CPU", "GPU"), doc="where to filter")
    sigma = Input(2.0, low=0.0, high=100.0, units="px", doc="Gaussian standard deviation")

    backend_used = Output("", doc="array library that filtered this frame")
    device = Output("", doc="the device it ran on")
    peak = Output(float, doc="largest value of the smoothed frame")

    def process(self, image, params, attributes, metadata):
        want_gpu = params.backend in ("Auto", "GPU")
        if want_gpu and GPU is not None:
            cupy, ndi, name = GPU
            out = smooth(image, float(params.sigma), cupy, ndi)
            used, device = "cupy", name
        else:
            out = smooth(image, float(params.sigma), np, scipy.ndimage)
            used, device = "numpy", "CPU"
        outputs = {"backend_used": used, "device": device, "peak": float(out.max())}
        if params.backend == "GPU" and GPU is None:
            return Result(outputs=outputs, image=out, status=Status.WARNING,
                          message="no GPU (CuPy with a CUDA device): filtered on the CPU")
        return Result(outputs=outputs, image=out)
