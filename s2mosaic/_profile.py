"""Cluster profiles (``s2mosaic/profiles/*.yaml``, or the user's own): read, validated, turned into cluster-class kwargs.

A profile's ``jobqueue:`` part is dask-jobqueue's own configuration shape; its ``s2mosaic:`` part
says which entry to use, how to scale and how long to wait for workers. See :mod:`s2mosaic._cluster`.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import dask
import yaml

from .errors import MissingDependencyError, SpecError

#: dask-jobqueue cluster classes by the name of their ``jobqueue:`` config entry.
JOBQUEUE_CLASSES: dict[str, str] = {
    "slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
    "oar": "OARCluster", "htcondor": "HTCondorCluster", "moab": "MoabCluster",
}
#: ``s2mosaic._cluster`` values: ``local`` (a ``distributed.LocalCluster``) or a jobqueue entry.
CLUSTER_KINDS: tuple[str, ...] = ("local", *JOBQUEUE_CLASSES)
#: The profiles shipped in ``s2mosaic/profiles/``, by the bare name that selects one.
PACKAGED_PROFILES: tuple[str, ...] = ("local", "slurm-cpu", "slurm-gpu", "pbs")
#: ``s2mosaic.local`` keys: the ``distributed.LocalCluster`` keyword arguments a profile may set.
LOCAL_OPTIONS = ("n_workers", "threads_per_worker", "processes", "memory_limit",
                 "dashboard_address", "resources", "local_directory", "host", "protocol")
_SECTION_KEYS = ("cluster", "local", "scale", "adapt", "wait")


# -- profiles -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterProfile:
    """A cluster profile: what to start and how to scale it (see ``s2mosaic/profiles/*.yaml``).

    Examples
    --------
    >>> p = ClusterProfile.from_dict({"s2mosaic": {"cluster": "local",
    ...                                            "local": {"n_workers": 2}}})
    >>> p.kind, dict(p.options), p.wait_workers
    ('local', {'n_workers': 2}, 1)
    """

    kind: str
    """``local`` (a ``distributed.LocalCluster``) or a dask-jobqueue entry: ``slurm``, ``pbs``, ..."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The ``jobqueue.<kind>`` entry (keys spelled as in dask-jobqueue's ``jobqueue.yaml``), or
    for ``local`` the ``distributed.LocalCluster`` keyword arguments."""
    jobs: int | None = None
    """``s2mosaic.scale.jobs``: a fixed number of jobs (workers for ``local``)."""
    adapt: tuple[int, int] | None = None
    """``s2mosaic.adapt``: ``(minimum_jobs, maximum_jobs)`` for adaptive scaling."""
    wait_workers: int = 1
    """``s2mosaic.wait.workers``: workers to wait for before the run starts (0: do not wait)."""
    wait_timeout: float = 600.0
    """``s2mosaic.wait.timeout`` in seconds (YAML also takes ``30m``, ``1h``)."""
    source: str | None = None
    """Where the profile was read from (used in messages)."""

    @classmethod
    def from_yaml(cls, path: str | Path) -> ClusterProfile:
        """Read a profile file."""
        p = resolve_profile(path)
        try:
            data = yaml.safe_load(p.read_text())
        except OSError as e:
            raise SpecError("<cluster profile>", str(p), f"cannot be read ({e.strerror}); give a "
                            "profile YAML file, or a packaged profile by name: "
                            f"{', '.join(PACKAGED_PROFILES)}") from None
        except yaml.YAMLError as e:
            raise SpecError("<cluster profile>", str(p), f"is not valid YAML: {e}") from None
        return cls.from_dict(data or {}, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> ClusterProfile:
        """Build a profile from its YAML shape: ``{jobqueue: {<kind>: {...}}, s2mosaic: {...}}``."""
        where = f"{source}: " if source else ""

        def bad(key: str, value: object, valid: str) -> SpecError:
            return SpecError(f"{where}{key}", value, valid)

        if not isinstance(data, Mapping):
            raise bad("<profile>", data, "expected a mapping with 'jobqueue' and/or 's2mosaic'")
        unknown = sorted(set(data) - {"jobqueue", "s2mosaic"})
        if unknown:
            raise bad(unknown[0], data[unknown[0]], "unknown key; a profile has 'jobqueue' (the "
                      "dask-jobqueue entries) and 's2mosaic' (which entry, scaling, waiting)")
        jq = data.get("jobqueue") or {}
        ours = data.get("s2mosaic") or {}
        for key, section in (("jobqueue", jq), ("s2mosaic", ours)):
            if not isinstance(section, Mapping):
                raise bad(key, section, "expected a mapping")
        unknown = sorted(set(ours) - set(_SECTION_KEYS))
        if unknown:
            raise bad(f"s2mosaic.{unknown[0]}", ours[unknown[0]],
                      f"unknown key; valid keys are {list(_SECTION_KEYS)}")
        kind = ours.get("cluster")
        if kind is None:
            if len(jq) != 1:
                raise bad("s2mosaic._cluster", None, "say which cluster to start: 'local' or one "
                          f"of the jobqueue entries {sorted(jq) or list(JOBQUEUE_CLASSES)}")
            kind = next(iter(jq))
        if kind not in CLUSTER_KINDS:
            raise bad("s2mosaic._cluster", kind, f"valid values are {list(CLUSTER_KINDS)}")
        if kind == "local":
            options = _local_options(ours.get("local") or {}, bad)
        else:
            if "local" in ours:
                raise bad("s2mosaic.local", ours["local"],
                          f"only used with s2mosaic._cluster: local (this profile is {kind!r})")
            entry = jq.get(kind) or {}
            if not isinstance(entry, Mapping):
                raise bad(f"jobqueue.{kind}", entry, "expected a mapping of dask-jobqueue options")
            options = _jobqueue_options(kind, entry, bad)
        jobs, adapt = _scaling(ours, bad)
        wait = ours.get("wait") or {}
        if not isinstance(wait, Mapping) or set(wait) - {"workers", "timeout"}:
            raise bad("s2mosaic.wait", wait, "expected {workers: N, timeout: 10m}")
        default_wait = 0 if adapt is not None and adapt[0] == 0 else 1
        workers = wait.get("workers", default_wait)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise bad("s2mosaic.wait.workers", workers, "expected an integer >= 0")
        if adapt is not None and adapt[0] == 0 and workers > 0:
            raise bad("s2mosaic.wait.workers", workers, "adapt.minimum_jobs is 0, so no worker "
                      "starts before there is work: set wait.workers to 0 or minimum_jobs >= 1")
        try:
            timeout = dask.utils.parse_timedelta(wait.get("timeout", 600), default="s")
        except (ValueError, TypeError, KeyError):
            timeout = None
        if timeout is None or not timeout > 0:
            raise bad("s2mosaic.wait.timeout", wait.get("timeout"),
                      "expected a positive duration: seconds, or a string such as '10m' or '1h'")
        return cls(kind=kind, options=options, jobs=jobs, adapt=adapt, wait_workers=workers,
                   wait_timeout=float(timeout), source=source)

    def with_options(self, **options: Any) -> ClusterProfile:
        """A copy with cluster options added or replaced (keyword names as in the cluster class,
        e.g. ``interface="lo"``, ``job_script_prologue=[...]``)."""
        merged = dict(self.options)
        for k, v in options.items():
            merged[k if self.kind == "local" else _config_key(k)] = v
        return self.replace(options=merged)

    def replace(self, **changes: Any) -> ClusterProfile:
        """A validated copy with some fields replaced (``jobs``, ``adapt``, ``wait_workers``, ...)."""
        new = dataclasses.replace(self, **changes)
        return ClusterProfile.from_dict(new.to_dict(), source=new.source)

    def to_dict(self) -> dict[str, Any]:
        """The YAML shape that :meth:`from_dict` reads back."""
        ours: dict[str, Any] = {"cluster": self.kind}
        if self.kind == "local":
            ours["local"] = dict(self.options)
        if self.jobs is not None:
            ours["scale"] = {"jobs": self.jobs}
        if self.adapt is not None:
            ours["adapt"] = {"minimum_jobs": self.adapt[0], "maximum_jobs": self.adapt[1]}
        ours["wait"] = {"workers": self.wait_workers, "timeout": self.wait_timeout}
        if self.kind == "local":
            return {"s2mosaic": ours}
        return {"jobqueue": {self.kind: dict(self.options)}, "s2mosaic": ours}

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Serialise to YAML; write it to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @property
    def queue(self) -> str | None:
        """The batch queue (partition) jobs go to, from the profile or the dask config."""
        if self.kind == "local":
            return None
        q = self.options.get("queue") or dask.config.get(f"jobqueue.{self.kind}.queue", None)
        return str(q) if q else None

    def describe(self) -> str:
        """One line for messages: kind, source, queue and scaling."""
        what = "LocalCluster" if self.kind == "local" else JOBQUEUE_CLASSES[self.kind]
        parts = [f"{what} from cluster profile {self.source or '<in memory>'}"]
        if self.queue:
            parts.append(f"queue {self.queue!r}")
        if self.adapt is not None:
            parts.append(f"adaptive {self.adapt[0]}-{self.adapt[1]} job(s)")
        elif self.jobs is not None:
            parts.append(f"{self.jobs} job(s)")
        return ", ".join(parts)


def packaged_profile(name: str) -> Path:
    """The packaged profile ``name`` (one of :data:`PACKAGED_PROFILES`)."""
    if name not in PACKAGED_PROFILES:
        raise SpecError("<cluster profile>", name,
                        f"no such packaged profile; valid values are {list(PACKAGED_PROFILES)}")
    return Path(__file__).parent / "profiles" / f"{name}.yaml"


def resolve_profile(path: str | Path) -> Path:
    """``path``, or the packaged profile it names when there is no such file and its last part is
    a bare name such as ``slurm-cpu`` (relative paths may already be rebased onto a directory)."""
    p = Path(path).expanduser()
    if not p.is_file() and p.suffix == "" and p.name in PACKAGED_PROFILES:
        return packaged_profile(p.name)
    return p


def load_profile(profile: str | Path | ClusterProfile) -> ClusterProfile:
    """A :class:`ClusterProfile` from a path (or the profile itself)."""
    return profile if isinstance(profile, ClusterProfile) else ClusterProfile.from_yaml(profile)


def _config_key(name: str) -> str:
    key = name.replace("_", "-")
    return "name" if key == "job-name" else key


def kwarg(key: str) -> str:
    return "job_name" if key == "name" else key.replace("-", "_")


def _local_options(opts: Any, bad: Any) -> dict[str, Any]:
    if not isinstance(opts, Mapping):
        raise bad("s2mosaic.local", opts, "expected a mapping of LocalCluster keyword arguments")
    out = {k.replace("-", "_"): v for k, v in opts.items()}
    for k in out:
        if k not in LOCAL_OPTIONS:
            raise bad(f"s2mosaic.local.{k}", out[k], f"unknown key; valid keys are {list(LOCAL_OPTIONS)}")
    for k in ("n_workers", "threads_per_worker"):
        v = out.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise bad(f"s2mosaic.local.{k}", v, "expected an integer >= 1")
    return out


def _jobqueue_options(kind: str, entry: Mapping[str, Any], bad: Any) -> dict[str, Any]:
    import_jobqueue()  # loads dask-jobqueue's defaults, which list the valid keys
    valid = sorted(dask.config.get(f"jobqueue.{kind}", {}))
    out: dict[str, Any] = {}
    for k, v in entry.items():
        key = _config_key(str(k))
        if key not in valid:
            raise bad(f"jobqueue.{kind}.{k}", v,
                      f"unknown dask-jobqueue option for {kind}; valid keys are {valid}")
        if v is not None:  # unset: dask-jobqueue falls back to the dask config, then its default
            out[key] = v
    return out


def _scaling(ours: Mapping[str, Any], bad: Any) -> tuple[int | None, tuple[int, int] | None]:
    def count(key: str, v: Any, low: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise bad(key, v, f"expected an integer >= {low}")
        return v

    scale, adapt = ours.get("scale"), ours.get("adapt")
    if scale is not None and adapt is not None:
        raise bad("s2mosaic.scale", scale, "give either scale (a fixed number of jobs) or adapt "
                  "(minimum_jobs/maximum_jobs), not both")
    if scale is not None:
        if not isinstance(scale, Mapping) or set(scale) != {"jobs"}:
            raise bad("s2mosaic.scale", scale, "expected {jobs: N}")
        return count("s2mosaic.scale.jobs", scale["jobs"], 1), None
    if adapt is not None:
        if not isinstance(adapt, Mapping) or set(adapt) - {"minimum_jobs", "maximum_jobs"}:
            raise bad("s2mosaic.adapt", adapt, "expected {minimum_jobs: N, maximum_jobs: M}")
        lo = count("s2mosaic.adapt.minimum_jobs", adapt.get("minimum_jobs", 0), 0)
        hi = count("s2mosaic.adapt.maximum_jobs", adapt.get("maximum_jobs"), max(lo, 1))
        return None, (lo, hi)
    return None, None


def import_jobqueue() -> ModuleType:
    """Import dask-jobqueue without its import-time write into the user's dask config directory.

    ``dask_jobqueue/config.py`` calls ``dask.config.ensure_file()``, which copies its defaults to
    ``~/.config/dask/jobqueue.yaml`` on first import. That one write goes to a throwaway directory;
    the defaults still reach dask's config through ``update_defaults()``.
    """
    if "dask_jobqueue" in sys.modules:
        return sys.modules["dask_jobqueue"]
    with tempfile.TemporaryDirectory(prefix="s2mosaic-jobqueue-") as tmp:
        saved = dask.config.PATH
        dask.config.PATH = tmp
        try:
            return importlib.import_module("dask_jobqueue")
        except ImportError:
            raise MissingDependencyError("dask-jobqueue", "hpc",
                                         "A batch-system cluster profile") from None
        finally:
            dask.config.PATH = saved


def cluster_class(kind: str) -> Any:
    return getattr(import_jobqueue(), JOBQUEUE_CLASSES[kind])
