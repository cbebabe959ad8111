"""s2mosaic: cloud-free Sentinel-2 mosaics over regions of any size, streamed with Dask.

>>> import s2mosaic
>>> spec = s2mosaic.MosaicSpec.from_yaml("my-area.yaml")   # doctest: +SKIP
>>> items = s2mosaic.search(spec)                           # doctest: +SKIP
>>> m = s2mosaic.mosaic(spec, items=items)                  # doctest: +SKIP
>>> s2mosaic.write(m, spec.output)                          # doctest: +SKIP

The modules behind these names are private (``s2mosaic._cube``, ...); the public API is what
``__all__`` lists, plus the subpackages ``composite``, ``masks``, ``demo`` and ``errors``.
"""

from importlib.metadata import PackageNotFoundError, version

from ._batch import BatchReport, run_many
from ._chips import Chip, ChipsReport, chip_at, chips_over, make_chips
from ._cluster import gpu_annotate, gpu_resources, job_script, load_profile, make_client
from ._grid import output_geobox
from ._pipeline import mosaic, software_versions
from ._plan import Plan, plan
from ._run import RunReport, run
from ._search import SearchResult, search
from ._select import Selection, select
from ._spec import MosaicSpec
from ._timeseries import (
    INDICES,
    GapFill,
    Observations,
    filter_acquisitions,
    gapfill,
    interpolate,
    normalized_difference,
    observations,
    series,
    valid_fraction,
    with_indices,
)
from ._timeseries_run import run_gapfill, run_series
from ._write import WriteResult, export_tiles, write
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    ClusterError,
    CoverageError,
    CubeError,
    DataError,
    EmptySearchError,
    GPUFallbackWarning,
    MissingDependencyError,
    ModelWeightsError,
    RunError,
    S2MosaicError,
    SearchError,
    SpecError,
    UnknownNameError,
    WriteError,
)

try:
    __version__ = version("s2mosaic")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"


def show_versions() -> None:
    """Print the versions of s2mosaic and the libraries it relies on (paste into bug reports)."""
    for name, v in software_versions().items():
        print(f"{name:>14}: {v}")


__all__ = [
    "INDICES",
    "ArgumentError",
    "ArgumentTypeError",
    "BatchReport",
    "Chip",
    "ChipsReport",
    "ClusterError",
    "CoverageError",
    "CubeError",
    "DataError",
    "EmptySearchError",
    "GPUFallbackWarning",
    "GapFill",
    "MissingDependencyError",
    "ModelWeightsError",
    "MosaicSpec",
    "Observations",
    "Plan",
    "RunError",
    "RunReport",
    "S2MosaicError",
    "SearchError",
    "SearchResult",
    "Selection",
    "SpecError",
    "UnknownNameError",
    "WriteError",
    "WriteResult",
    "__version__",
    "chip_at",
    "chips_over",
    "export_tiles",
    "filter_acquisitions",
    "gapfill",
    "gpu_annotate",
    "gpu_resources",
    "interpolate",
    "job_script",
    "load_profile",
    "make_chips",
    "make_client",
    "mosaic",
    "normalized_difference",
    "observations",
    "output_geobox",
    "plan",
    "run",
    "run_gapfill",
    "run_many",
    "run_series",
    "search",
    "select",
    "series",
    "show_versions",
    "valid_fraction",
    "with_indices",
    "write",
]
