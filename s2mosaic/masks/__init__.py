"""Observation validity masks: SCL classes, nodata, dilation."""

from .combine import dilate
from .scl import scl_invalid, valid_mask

__all__ = ["dilate", "scl_invalid", "valid_mask"]
