"""One exception tree for the whole package, and its warning categories.

Every message names the bad value, where it came from (config field, item id, asset, tile) and
what would be valid, so a user can fix the problem without reading our source. Errors about a
bad value also derive from ``ValueError`` (``TypeError``, ``KeyError``, ``ImportError``,
``FileNotFoundError`` where that is what they are), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "ClusterError",
    "CoverageError",
    "CubeError",
    "DataError",
    "DeviceError",
    "DroppedScenesWarning",
    "EmptySearchError",
    "GPUFallbackWarning",
    "HarmonisationWarning",
    "MissingDependencyError",
    "ModelWeightsError",
    "RunError",
    "S2MosaicError",
    "SceneReadError",
    "SearchError",
    "SpecError",
    "UnknownNameError",
    "WriteError",
]


class S2MosaicError(Exception):
    """Root of every error s2mosaic raises on purpose."""


class SpecError(S2MosaicError, ValueError):
    """A `MosaicSpec` field has an invalid value.

    ``field`` is the dotted path of the field (``"composite.percentile"``), ``value`` the value
    given and ``valid`` a description of what would be accepted.
    """

    def __init__(self, field: str, value: object, valid: str) -> None:
        self.field = field
        self.value = value
        self.valid = valid
        super().__init__(f"{field}: invalid value {value!r}; {valid}")


class ArgumentError(S2MosaicError, ValueError):
    """An argument of a public function has an invalid value (arrays and datasets given to
    :mod:`s2mosaic.composite`, :mod:`s2mosaic.masks` and the time-series functions; options such
    as a method, percentile or window length). The message names the argument, the value given
    and what would be valid."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of a public function has the wrong type (a NumPy array where an
    ``xarray.Dataset`` is needed, a float where an integer is, ...)."""


class UnknownNameError(ArgumentError, KeyError):
    """A name (band variable, spectral index) is not among those available; the message lists
    them."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class SearchError(S2MosaicError):
    """The STAC source could not be opened or searched."""


class EmptySearchError(SearchError):
    """A search matched no items. The message repeats the query."""


class CoverageError(SearchError):
    """The scenes do not cover the AOI and ``select.require_full_coverage`` is set."""


class DataError(S2MosaicError):
    """An item or asset does not carry what the pipeline needs (band, projection, nodata)."""


class SceneReadError(DataError):
    """An asset could not be read (after GDAL's retries of each request): ``url`` is the
    asset's href (unsigned: never a token), ``error`` what the read raised.

    Under ``runtime.on_read_error: skip`` a run drops that scene from the tile being computed
    and records it; under ``fail`` the tile fails with this message."""

    def __init__(self, url: str, error: str) -> None:
        super().__init__(f"could not read {url}: {error}")
        self.url, self.error = url, error

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # it crosses from workers intact
        return type(self), (self.url, self.error)


class CubeError(S2MosaicError):
    """The lazy cube could not be built for the requested grid and bands."""


class WriteError(S2MosaicError):
    """An output could not be written (path exists, invalid format, failed write)."""


class RunError(S2MosaicError):
    """A run finished with tiles that failed after their retries (the rest is written; rerun
    with ``--resume`` to redo only the failed ones)."""

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class ClusterError(S2MosaicError):
    """A cluster could not be started or reached, or its workers never arrived."""


#: The distribution's name on PyPI (``pip install s2mosaic`` is another project); the import name
#: and the command stay ``s2mosaic``.
DISTRIBUTION = "s2mosaic-stream"


class MissingDependencyError(S2MosaicError, ImportError):
    """An optional dependency is not installed; the message gives the pip line that fixes it."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs the optional package {package!r}, which is not installed. "
            f"Install it with: pip install '{DISTRIBUTION}[{extra}]'"
        )


class ModelWeightsError(S2MosaicError, FileNotFoundError):
    """Model weights a masker needs (OmniCloudMask) are missing from the local weights directory.

    The message lists the expected files with their sizes and SHA-256, where to get them, and the
    spec field / environment variable that points at the directory. Weights are never downloaded
    during a run.
    """


class DeviceError(S2MosaicError):
    """``runtime.device: gpu`` (``--device gpu``, ``device="gpu"``) cannot be honoured: no worker
    advertises a ``GPU`` resource, or CuPy cannot run on one that does (not installed, CUDA
    version mismatch, no visible device). The message names the cause and the fix."""


class GPUFallbackWarning(UserWarning):
    """GPU tasks run on CPU because no worker of the cluster has a ``GPU`` resource."""


class DroppedScenesWarning(UserWarning):
    """A run completed without some scenes that could not be read (``runtime.on_read_error:
    skip``); its report names them, and ``--resume --retry-dropped`` reads them again."""


class HarmonisationWarning(UserWarning):
    """A cube is composited whose acquisitions may carry the BOA offset of processing baseline
    ≥ 04.00 (−1000 DN, from 2022-01-25 on), and ``ds.s2.harmonise(items)`` was not applied."""
