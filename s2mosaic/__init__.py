"""s2mosaic: cloud-free Sentinel-2 mosaics over regions of any size, streamed with Dask.

>>> import s2mosaic
>>> spec = s2mosaic.MosaicSpec.from_yaml("my-area.yaml")   # doctest: +SKIP
>>> items = s2mosaic.search(spec)                           # doctest: +SKIP
>>> m = s2mosaic.mosaic(spec, items=items)                  # doctest: +SKIP
>>> s2mosaic.write(m, spec.output)                          # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

from .batch import BatchReport, run_many
from .cluster import make_client
from .errors import (
    CubeError,
    DataError,
    EmptySearchError,
    MissingDependencyError,
    RunError,
    S2MosaicError,
    SearchError,
    SpecError,
    WriteError,
)
from .pipeline import mosaic, software_versions
from .plan import Plan, plan
from .run import RunReport, run, write
from .search import SearchResult, search
from .select import Selection, select
from .spec import MosaicSpec
from .timeseries import GapFill, gapfill, run_gapfill, run_series, series
from .write import export_tiles

try:
    __version__ = version("s2mosaic")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"


def show_versions() -> None:
    """Print the versions of s2mosaic and the libraries it relies on (paste into bug reports)."""
    for name, v in software_versions().items():
        print(f"{name:>14}: {v}")


__all__ = [
    "BatchReport",
    "CubeError",
    "DataError",
    "EmptySearchError",
    "GapFill",
    "MissingDependencyError",
    "MosaicSpec",
    "Plan",
    "RunError",
    "RunReport",
    "S2MosaicError",
    "SearchError",
    "SearchResult",
    "Selection",
    "SpecError",
    "WriteError",
    "__version__",
    "export_tiles",
    "gapfill",
    "make_client",
    "mosaic",
    "plan",
    "run",
    "run_gapfill",
    "run_many",
    "run_series",
    "search",
    "select",
    "series",
    "show_versions",
    "write",
]
