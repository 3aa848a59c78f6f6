"""Sparse (`Sparse1:`): dense frames to sparse ones and back (Lima2's sparse frames).

Modes:
- Threshold: keep the pixels strictly above `Threshold` (Lima2's plain sparse frame, as its
  XPCS pipeline makes; Threshold 0 keeps the non-zero pixels).
- Radial: keep the pixels strictly above mean + `SigmaK` sigma of their radius bin around
  (`CenterX`, `CenterY`), `NumBins` bins of equal width out to the farthest corner (Lima2 SMX
  style). The background profile (mean and sigma per bin) travels with the frame and is saved
  with it (NDFileHDF5: `background_avg`, `background_std`). 2-D mono frames only.
- Densify: rebuild the dense frame of a sparse input: zeros (`DensifyFill` Zero) or the radial
  background's mean (Background) under the kept pixels. A dense input passes unchanged.

The output of a sparsify mode is an NDArray whose `data` is the kept intensities and whose
`sparse` holds the index, the dense shape and the profile; its dims stay the dense frame's, so
ArraySize*_RBV downstream describe the image, CompressedSize_RBV the bytes held. Plugins that
have not declared sparse support get the frame densified by the plugin base (Stats, ROI, the
image plugins, TIFF...), HDF5 writes it in Lima2's CSR layout. A sparse input to a sparsify
mode is densified first, so the modes compose.

Read-backs for the last frame: NumPixels_RBV (pixels kept), FillFactor_RBV (kept / all, the
XPCS "fill factor") and CompressionFactor_RBV (dense bytes / bytes held, index and profile
counted). They are also attached as NDAttributes (SparseNumPixels, SparseCompression) so a
table or HDF5 writer keeps them per frame.

Memory: a sparse frame is allocated from the heap (it is small and its size varies); a densified
frame from this port's pool (its limit applies, a refused frame becomes missing `no memory`).
"""

from __future__ import annotations

from ndflow.ndarray import AttrSource, NDArray, NDAttribute, SparsePayload
from ndflow.params import R, RW, enum_param, float_param, int_param
from ndflow.plugin import Outputs, Plugin
from ndflow.sparse import compression_factor, densify, densify_array, sparsify, \
    sparsify_radial

MODES = ("Threshold", "Radial", "Densify")
THRESHOLD, RADIAL, DENSIFY = range(3)
FILLS = ("Zero", "Background")
MAX_BINS = 65536
#: centre coordinates further out than this are refused as a typo, not a geometry
MAX_CENTRE = 1e6


class Sparse(Plugin):
    screen = "NDSparse"
    kind = "sparse"
    plugin_type = "NDPluginSparse"
    sparse_aware = True  # Densify reads sparse frames; the sparsify modes densify themselves
    PARAMS = Plugin.PARAMS + ((
        enum_param("Mode", MODES, THRESHOLD, RW, group="Sparse",
                   doc="Threshold: pixels above Threshold; Radial: above mean + SigmaK sigma "
                       "of their radius bin; Densify: sparse frames back to dense"),
        float_param("Threshold", 0.0, RW, precision=2, group="Sparse",
                    doc="Threshold mode: pixels strictly above it are kept"),
        float_param("SigmaK", 3.0, RW, precision=2, low=0.0, high=1000.0, group="Radial",
                    doc="Radial mode: pixels above mean + SigmaK * sigma of their bin are kept"),
        float_param("CenterX", 512.0, RW, precision=1, low=-MAX_CENTRE, high=MAX_CENTRE,
                    units="pixel", group="Radial", doc="x of the radial bins' centre"),
        float_param("CenterY", 512.0, RW, precision=1, low=-MAX_CENTRE, high=MAX_CENTRE,
                    units="pixel", group="Radial", doc="y of the radial bins' centre"),
        int_param("NumBins", 256, RW, low=1, high=MAX_BINS, group="Radial",
                  doc="radius bins, equally wide from the centre to the farthest corner"),
        enum_param("DensifyFill", FILLS, 0, RW, group="Densify",
                   doc="what the pixels not kept get: 0, or their bin's background mean"),
        int_param("NumPixels_RBV", 0, R, group="Result", doc="pixels kept in the last frame"),
        float_param("FillFactor_RBV", 0.0, R, precision=4, group="Result",
                    doc="pixels kept / pixels of the frame"),
        float_param("CompressionFactor_RBV", 0.0, R, precision=1, group="Result",
                    doc="dense bytes / sparse bytes (index, intensity, profile)"),
    ),)

    def process(self, array: NDArray) -> Outputs:
        v = self.frame_settings
        mode = int(v["Mode"])
        if mode == DENSIFY:
            return self._densify(array, bool(v["DensifyFill"]))
        dense = densify_array(array).data
        if mode == RADIAL:
            if dense.ndim != 2:
                raise ValueError(f"Radial mode needs a 2-D mono frame, not {dense.ndim}-D")
            index, intensity, profile = sparsify_radial(
                dense, (float(v["CenterX"]), float(v["CenterY"])), int(v["NumBins"]),
                float(v["SigmaK"]))
        else:
            index, intensity = sparsify(dense, float(v["Threshold"]))
            profile = None
        payload = SparsePayload(index, intensity, tuple(dense.shape), profile)
        out = array.derive(intensity, sparse=payload)
        factor = compression_factor(payload)
        self.set_many({"NumPixels_RBV": int(index.size),
                       "FillFactor_RBV": index.size / max(dense.size, 1),
                       "CompressionFactor_RBV": factor})
        out.attributes["SparseNumPixels"] = NDAttribute(
            "SparseNumPixels", int(index.size), "pixels kept (Sparse)", AttrSource.PARAM,
            "NumPixels_RBV")
        out.attributes["SparseCompression"] = NDAttribute(
            "SparseCompression", factor, "dense / sparse bytes (Sparse)", AttrSource.PARAM,
            "CompressionFactor_RBV")
        return out

    def _densify(self, array: NDArray, with_background: bool) -> NDArray:
        sparse = array.sparse
        if sparse is None:
            return array  # already dense
        buffer = self.output_buffer(tuple(sparse.shape), sparse.dtype)
        dense = densify(sparse, with_background, out=buffer)
        self.set_many({"NumPixels_RBV": int(sparse.index.size),
                       "FillFactor_RBV": sparse.index.size / max(dense.size, 1),
                       "CompressionFactor_RBV": compression_factor(sparse)})
        return array.derive(dense, sparse=None)
