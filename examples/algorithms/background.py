"""Background (dark-frame) subtraction: capture an averaged background, send on a float32 image.

Write CaptureFrames = N > 0 to discard the stored background and average the next N frames into
a new one; 0 stops a capture early. Writing the same N again is no change: write 0, then N. The
first frame after the file is (re)loaded also starts a capture if CaptureFrames is > 0. A change
of frame shape (size or colour mode) discards the background and restarts a capture under way.

Per frame (`frame` is the input array; RGB1 frames keep their colour axis), exactly:

    background = sum of frame_k.astype(np.float64) over the captured frames, in order, / count
    bg = background if enable and count > 0 else np.float64(0.0)
    out = frame.astype(np.float32) - bg + offset        # float64 arithmetic
    if clip_negative: out = np.maximum(out, 0.0)
    image = out.astype(np.float32)

A frame being captured is added to the background first, so its own output already uses it.
BackgroundMean = float(background.mean()) (NaN without one); ResidualMean =
float(image.mean(dtype=np.float64)).
"""

import numpy as np

from ndflow.algorithm import Algorithm, Input, Output, Result


class BackgroundSubtract(Algorithm):
    capture_frames = Input(0, low=0, doc="average the next N frames into a new background")
    enable = Input(True, doc="subtract the stored background")
    offset = Input(0.0, units="counts", doc="added after the subtraction")
    clip_negative = Input(True, doc="clip the result at 0")

    background_frames = Output(int, doc="frames averaged into the stored background")
    background_mean = Output(float, units="counts", doc="mean of the stored background")
    residual_mean = Output(float, units="counts", doc="mean of the output image")

    def __init__(self):
        self.total = None  # float64 running sum of the captured frames
        self.background = None  # total / count
        self.count = 0
        self.remaining = 0  # frames still to capture
        self.requested = 0  # N of the capture under way
        self.seen = 0  # the last CaptureFrames value acted on

    def params_changed(self, params, changed):
        if "capture_frames" in changed:
            self.capture(int(params.capture_frames))

    def capture(self, n):
        self.seen = n
        self.requested = self.remaining = max(n, 0)
        if self.remaining:
            self.total, self.background, self.count = None, None, 0

    def process(self, image, params, attributes, metadata):
        if int(params.capture_frames) != self.seen:  # set before loading: not a params change
            self.capture(int(params.capture_frames))
        if self.total is not None and self.total.shape != image.shape:
            self.total, self.background, self.count = None, None, 0
            self.remaining = self.requested if self.remaining else 0
        if self.remaining > 0:
            frame = image.astype(np.float64)
            self.total = frame if self.total is None else np.add(self.total, frame, out=self.total)
            self.count += 1
            self.remaining -= 1
            self.background = self.total / self.count
        use = params.enable and self.background is not None
        bg = self.background if use else np.float64(0.0)
        out = image.astype(np.float32) - bg + params.offset
        if params.clip_negative:
            np.maximum(out, 0.0, out=out)
        out = out.astype(np.float32)
        mean = float(self.background.mean()) if self.background is not None else float("nan")
        return Result(outputs={"background_frames": self.count, "background_mean": mean,
                               "residual_mean": float(out.mean(dtype=np.float64))}, image=out)
