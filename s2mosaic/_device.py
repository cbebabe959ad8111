"""Where the heavy per-chunk work of a mosaic runs: ``runtime.device`` resolved against the
workers that will run it.

``cpu`` is always possible. ``gpu`` needs, on the workers that will run the GPU tasks, a Dask
``GPU`` resource (``--resources GPU=1``, ``LocalCluster(resources={"GPU": 1})``, the
``slurm-gpu`` profile) *and* a working CuPy: importable, with a CUDA runtime the driver accepts
and at least one visible device. :func:`probe_cupy` asks exactly that, on every GPU worker
(``client.run``), so the answer is the workers', not the client's. ``auto`` takes ``gpu`` when
both hold and ``cpu`` otherwise, saying why once per process (logger ``s2mosaic.device``);
``gpu`` where either fails raises :class:`~s2mosaic.errors.DeviceError` naming the cause and
the fix. Without a ``distributed`` client the tasks run in this process, which is then probed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ._spec import DEVICES
from .errors import DISTRIBUTION, ArgumentError, DeviceError

__all__ = ["DEVICES", "DeviceProbe", "current_client", "probe_cupy", "probe_workers",
           "resolve_device"]

GPU_RESOURCE = "GPU"
log = logging.getLogger("s2mosaic.device")
_SAID: set[str] = set()


@dataclass(frozen=True)
class DeviceProbe:
    """What one worker process can do with CuPy (:func:`probe_cupy`)."""

    cupy: str | None
    """CuPy's version; None when it does not import."""
    cuda_runtime: int | None = None
    """CUDA runtime version CuPy was built against (``12080`` is 12.8); None if unknown."""
    cuda_driver: int | None = None
    """Highest CUDA version the installed driver supports; None without a driver."""
    devices: int = 0
    """CUDA devices visible to the process (``CUDA_VISIBLE_DEVICES`` applies)."""
    error: str | None = None
    """Why CuPy cannot be used, as the exception said it; None when it can."""

    @property
    def ok(self) -> bool:
        return self.cupy is not None and self.error is None and self.devices > 0

    def problem(self) -> str:
        """The cause and the fix, for a probe that is not :attr:`ok`."""
        if self.cupy is None:
            return (f"CuPy is not importable there ({self.error}); install it in the workers' "
                    f"environment with: pip install '{DISTRIBUTION}[gpu]' (CUDA 12 drivers) or "
                    f"pip install '{DISTRIBUTION}[gpu-cuda13]' (CUDA 13 drivers)")
        if self.cuda_runtime and self.cuda_driver and self.cuda_runtime // 1000 > self.cuda_driver // 1000:
            return (f"CuPy {self.cupy} is built for CUDA {_cuda(self.cuda_runtime)} but the driver "
                    f"supports CUDA {_cuda(self.cuda_driver)} at most; install the CuPy that "
                    f"matches the driver (pip install '{DISTRIBUTION}[gpu]' for CUDA 12, "
                    f"'{DISTRIBUTION}[gpu-cuda13]' for CUDA 13) or update the NVIDIA driver")
        if self.error is not None:
            return (f"CuPy {self.cupy} (CUDA {_cuda(self.cuda_runtime)}) cannot use CUDA: "
                    f"{self.error}; check the NVIDIA driver (nvidia-smi) and that the CuPy "
                    f"package matches its CUDA major version (cupy-cuda12x / cupy-cuda13x)")
        return (f"CuPy {self.cupy} sees no CUDA device; check nvidia-smi and "
                "CUDA_VISIBLE_DEVICES in the workers' environment")


def _cuda(version: int | None) -> str:
    return "?" if not version else f"{version // 1000}.{version % 1000 // 10}"


def probe_cupy() -> dict[str, Any]:
    """Run where the GPU tasks would run: can CuPy compute there? A plain dict (it crosses
    from workers through ``client.run``) with the fields of :class:`DeviceProbe`."""
    try:
        import cupy
    except Exception as err:  # ImportError, or a CUDA library that fails to load
        return asdict(DeviceProbe(cupy=None, error=f"{type(err).__name__}: {err}"))
    version = str(cupy.__version__)
    runtime = driver = None
    try:
        runtime = int(cupy.cuda.runtime.runtimeGetVersion())
        driver = int(cupy.cuda.runtime.driverGetVersion())
        devices = int(cupy.cuda.runtime.getDeviceCount())
        if devices:
            # A real round trip: a CuPy whose kernels cannot load fails here, not mid-run.
            int(cupy.arange(3, dtype=cupy.uint16).sum().get())
    except Exception as err:  # CUDARuntimeError (no driver, too old a driver), CompileException
        return asdict(DeviceProbe(cupy=version, cuda_runtime=runtime, cuda_driver=driver,
                                  error=f"{type(err).__name__}: {err}"))
    return asdict(DeviceProbe(cupy=version, cuda_runtime=runtime, cuda_driver=driver,
                              devices=devices))


def gpu_workers(client: Any) -> list[str]:
    """Addresses of the workers of ``client`` that advertise a ``GPU`` resource."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return [addr for addr, w in workers.items()
            if (w.get("resources") or {}).get(GPU_RESOURCE, 0) >= 1]


def probe_workers(client: Any, workers: list[str] | None = None) -> dict[str, DeviceProbe]:
    """:func:`probe_cupy` on ``workers`` of ``client`` (default: its GPU workers), by address."""
    targets = gpu_workers(client) if workers is None else workers
    if not targets:
        return {}
    answers = client.run(probe_cupy, workers=targets)
    return {addr: DeviceProbe(**answer) for addr, answer in answers.items()}


def current_client() -> Any:
    """The default ``distributed`` client, or None (then tasks run in this process)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


def resolve_device(spec_device: str, client: Any = None) -> Literal["cpu", "gpu"]:
    """``"cpu"`` or ``"gpu"`` for ``runtime.device`` ``spec_device`` on ``client``'s workers.

    Parameters
    ----------
    spec_device
        ``"auto"``, ``"cpu"`` or ``"gpu"``.
    client
        A ``distributed.Client``; None: no cluster, the tasks run in this process (Dask's local
        schedulers), which is then probed. Pass :func:`current_client` for the default client.

    Raises
    ------
    DeviceError
        ``spec_device="gpu"`` and no worker advertises a ``GPU`` resource, or CuPy cannot run on
        one that does (not installed, CUDA version mismatch, no device): the message names the
        worker, the cause and the fix.

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    """
    if spec_device not in DEVICES:
        raise ArgumentError(f"device={spec_device!r} is not a device; use one of "
                            f"{', '.join(repr(d) for d in DEVICES)}")
    if spec_device == "cpu":
        return "cpu"
    if client is None:
        probe = DeviceProbe(**probe_cupy())
        problem = None if probe.ok else f"in this process (no Dask cluster): {probe.problem()}"
    else:
        targets = gpu_workers(client)
        if not targets:
            n = len(client.scheduler_info(n_workers=-1)["workers"])
            problem = (f"none of the cluster's {n} Dask worker(s) advertises a {GPU_RESOURCE!r} "
                       "resource; start GPU workers with --resources GPU=1 (dask worker), "
                       "LocalCluster(resources={'GPU': 1}) or the slurm-gpu cluster profile")
        else:
            bad = {a: p for a, p in probe_workers(client, targets).items() if not p.ok}
            problem = None
            if bad:
                addr, probe = next(iter(sorted(bad.items())))
                problem = (f"{len(bad)} of {len(targets)} GPU worker(s) cannot run CuPy; on "
                           f"{addr}: {probe.problem()}")
    if problem is None:
        return "gpu"
    if spec_device == "gpu":
        raise DeviceError(f"runtime.device is 'gpu' but {problem}. Or set runtime.device: auto "
                          "(falls back to CPU) or cpu (--device cpu)")
    # A CPU-only cluster is the ordinary case (INFO); GPU workers whose CuPy fails are not.
    level = logging.INFO if client is not None and not gpu_workers(client) else logging.WARNING
    say_once(f"runtime.device auto: running on CPU because {problem}", level)
    return "cpu"


def say_once(message: str, level: int = logging.INFO) -> None:
    """Log ``message`` once per process (repeated runs and tiles do not repeat it)."""
    if message not in _SAID:
        _SAID.add(message)
        log.log(level, message)
