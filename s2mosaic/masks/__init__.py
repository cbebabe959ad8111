"""Observation validity masks: nodata, SCL classes, OmniCloudMask, s2cloudless, ukis-csmask,
buffers.

``valid_mask`` is the entry point; each masker is importable on its own. The OmniCloudMask,
s2cloudless and ukis-csmask modules import their heavy dependencies (torch, LightGBM,
onnxruntime) only when they run.
"""

from ._context import CloudMasker, MaskContext, nodata_mask, pixel_size_m
from .combine import MASKERS, buffer_pixels, context_pixels, dilate, valid_mask
from .scl import scl_clouds, scl_invalid, scl_nodata

__all__ = [
    "MASKERS",
    "CloudMasker",
    "MaskContext",
    "buffer_pixels",
    "context_pixels",
    "dilate",
    "nodata_mask",
    "pixel_size_m",
    "scl_clouds",
    "scl_invalid",
    "scl_nodata",
    "valid_mask",
]
