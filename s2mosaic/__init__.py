"""s2mosaic: cloud-free Sentinel-2 mosaics over regions of any size, streamed with Dask.

>>> import s2mosaic
>>> spec = s2mosaic.MosaicSpec.from_yaml("my-area.yaml")   # doctest: +SKIP
>>> items = s2mosaic.search(spec)                           # doctest: +SKIP
>>> m = s2mosaic.mosaic(spec, items=items)                  # doctest: +SKIP
>>> s2mosaic.write(m, spec.output)                          # doctest: +SKIP

or, from a notebook, items first (as ``odc.stac.load``), and ``ds.s2`` on cubes loaded elsewhere:

>>> m = s2mosaic.mosaic(items, bands=["red", "nir"], resolution=10, bbox=bbox)  # doctest: +SKIP
>>> m = ds.s2.harmonise(items).s2.composite(q=25)            # doctest: +SKIP

The modules behind these names are private (``s2mosaic._cube``, ...); the public API is what
``__all__`` lists, plus the subpackages ``composite``, ``masks``, ``demo`` and ``errors``.
"""

import sys
from importlib import import_module
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .errors import DISTRIBUTION as _DISTRIBUTION
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    ClusterError,
    CoverageError,
    CubeError,
    DataError,
    DeviceError,
    DroppedScenesWarning,
    EmptySearchError,
    GPUFallbackWarning,
    HarmonisationWarning,
    MissingDependencyError,
    ModelWeightsError,
    RunError,
    S2MosaicError,
    SceneReadError,
    SearchError,
    SpecError,
    UnknownNameError,
    WriteError,
)

if TYPE_CHECKING:
    from ._api import load, mosaic
    from ._batch import BatchReport, run_many
    from ._chips import Chip, ChipsReport, chip_at, chips_over, make_chips
    from ._cluster import gpu_annotate, gpu_resources, job_script, load_profile, make_client
    from ._dategrid import interpolate
    from ._export import export_tiles
    from ._gapfill import GapFill, gapfill
    from ._grid import output_geobox
    from ._plan import Plan, plan
    from ._run import RunReport, run
    from ._search import SearchResult, search
    from ._select import Selection, select
    from ._spec import MosaicSpec
    from ._timeseries import (
        INDICES,
        Observations,
        filter_acquisitions,
        normalized_difference,
        observations,
        series,
        valid_fraction,
        with_indices,
    )
    from ._timeseries_run import run_gapfill, run_series
    from ._write import WriteResult, write

# The modules behind the public names are imported on first use (PEP 562), so ``import
# s2mosaic.cli`` (``s2mosaic --help``) or ``s2mosaic.errors`` does not pull in Dask, xarray,
# odc-stac and GDAL. Keep this table and the imports above in step (tests/test_cli.py checks).
_LAZY: dict[str, tuple[str, ...]] = {
    "_batch": ("BatchReport", "run_many"),
    "_chips": ("Chip", "ChipsReport", "chip_at", "chips_over", "make_chips"),
    "_cluster": ("gpu_annotate", "gpu_resources", "job_script", "load_profile", "make_client"),
    "_grid": ("output_geobox",),
    "_api": ("load", "mosaic"),
    "_plan": ("Plan", "plan"),
    "_run": ("RunReport", "run"),
    "_search": ("SearchResult", "search"),
    "_select": ("Selection", "select"),
    "_spec": ("MosaicSpec",),
    "_timeseries": (
        "INDICES", "Observations", "filter_acquisitions", "normalized_difference",
        "observations", "series", "valid_fraction", "with_indices",
    ),
    "_dategrid": ("interpolate",),
    "_gapfill": ("GapFill", "gapfill"),
    "_timeseries_run": ("run_gapfill", "run_series"),
    "_write": ("WriteResult", "write"),
    "_export": ("export_tiles",),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}
#: Subpackages reachable as attributes of ``s2mosaic`` after ``import s2mosaic``.
_SUBPACKAGES = ("composite", "demo", "masks")


class _RegisterAccessor(MetaPathFinder):
    """Registers ``ds.s2`` (:mod:`s2mosaic._accessor`) right after xarray is imported, so that
    ``import s2mosaic`` stays cheap (no xarray for ``s2mosaic --help``) and ``ds.s2`` works
    whether xarray was imported before s2mosaic or after. Removes itself on first use."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name != "xarray":
            return None
        sys.meta_path.remove(self)
        spec = find_spec(name)  # the finders after this one
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            import_module("._accessor", __name__)

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if "xarray" in sys.modules:
    import_module("._accessor", __name__)
elif not any(type(f).__name__ == "_RegisterAccessor" for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAccessor())


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return import_module(f".{name}", __name__)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 's2mosaic' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # once imported, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBPACKAGES})


try:
    __version__ = version(_DISTRIBUTION)
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"


def show_versions() -> None:
    """Print the versions of s2mosaic and the libraries it relies on (paste into bug reports)."""
    from ._pipeline import software_versions

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
    "DeviceError",
    "DroppedScenesWarning",
    "EmptySearchError",
    "GPUFallbackWarning",
    "GapFill",
    "HarmonisationWarning",
    "MissingDependencyError",
    "ModelWeightsError",
    "MosaicSpec",
    "Observations",
    "Plan",
    "RunError",
    "RunReport",
    "S2MosaicError",
    "SceneReadError",
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
    "load",
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
