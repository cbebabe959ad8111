"""The ``s2mosaic`` command: a thin layer over the Python API."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import S2MosaicError
from .spec import MosaicSpec

app = typer.Typer(
    help="Cloud-free Sentinel-2 mosaics from STAC, streamed with Dask.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)
out = Console()

SpecArg = Annotated[Path, typer.Argument(help="Mosaic spec (YAML).", show_default=False)]
SchedulerOpt = Annotated[
    str | None,
    typer.Option("--scheduler", help="Address of a running Dask scheduler, or 'synchronous' / "
                 "'threads' for no cluster. Default: the spec's runtime.scheduler (a LocalCluster)."),
]
ClusterOpt = Annotated[
    Path | None,
    typer.Option("--cluster", help="Cluster profile (YAML, e.g. cluster/slurm-cpu.yaml): start a "
                 "LocalCluster or dask-jobqueue workers (SLURM, PBS, ...) for the run. Default: "
                 "the spec's runtime.cluster.", show_default=False),
]
ProfileArg = Annotated[Path, typer.Argument(help="Cluster profile (YAML), e.g. "
                                            "cluster/slurm-gpu.yaml.", show_default=False)]


def _fail(e: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {e}")
    return typer.Exit(code=2)


def _load(path: Path, scheduler: str | None = None, overwrite: bool = False,
          cluster: Path | None = None) -> MosaicSpec:
    spec = _with_runtime(MosaicSpec.from_yaml(path), scheduler, cluster)
    if overwrite:
        spec = spec.replace(output=dataclasses.replace(spec.output, overwrite=True))
    return spec


def _with_runtime(spec: MosaicSpec, scheduler: str | None, cluster: Path | None) -> MosaicSpec:
    """The spec with the --scheduler / --cluster flags applied (each replaces the other)."""
    if scheduler is not None and cluster is not None:
        raise typer.BadParameter("give --scheduler or --cluster, not both", param_hint="--cluster")
    if scheduler is not None:
        runtime = dataclasses.replace(spec.runtime, scheduler=scheduler, cluster=None)
    elif cluster is not None:  # relative to the working directory, like any CLI path
        runtime = dataclasses.replace(spec.runtime, cluster=cluster.resolve(), scheduler=None,
                                      n_workers=None, threads_per_worker=None)
    else:
        return spec
    return spec.replace(runtime=runtime)


@app.command()
def search(spec_path: SpecArg,
           as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
           ) -> None:
    """List the scenes the spec's search finds (after filters and de-duplication)."""
    from .cube import resolve_band
    from .search import boa_offset, mgrs_tile
    from .search import search as do_search

    try:
        spec = _load(spec_path)
        items = do_search(spec)
    except S2MosaicError as e:
        raise _fail(e) from None
    if as_json:
        out.print_json(json.dumps({
            "query": items.query,
            "items": [{"id": i.id, "datetime": str(i.datetime), "mgrs_tile": mgrs_tile(i),
                       "eo:cloud_cover": i.properties.get("eo:cloud_cover")} for i in items],
            "dropped": [{"id": d.id, "reason": d.reason} for d in items.dropped],
        }))
        return
    table = Table(title=f"{len(items)} scene(s) for {spec_path}")
    # Ids are what users copy: never truncate them, let the other columns give way.
    table.add_column("id", no_wrap=True, min_width=max((len(i.id) for i in items), default=2))
    for col in ("datetime (UTC)", "tile", "cloud %", "baseline", "BOA offset"):
        table.add_column(col, justify="right" if col in ("cloud %", "BOA offset") else "left")
    band_key = spec.bands[0]
    for i in items:
        cc = i.properties.get("eo:cloud_cover")
        table.add_row(i.id, str(i.datetime)[:19], mgrs_tile(i) or "?",
                      f"{cc:.1f}" if isinstance(cc, int | float) else "?",
                      str(i.properties.get("s2:processing_baseline", "?")),
                      str(boa_offset(i, resolve_band(i, band_key))))
    out.print(table)
    for d in items.dropped:
        out.print(f"[dim]dropped {d.id}: {d.reason}[/]")


def _execute(spec: MosaicSpec) -> None:
    from .run import run as do_run

    def on_stage(name: str, info: dict[str, Any]) -> None:
        if name == "cluster":
            link = info.get("dashboard")
            console.print(f"Dask cluster: {info.get('cluster')}")
            if link:
                console.print(f"Dask dashboard: [link={link}]{link}[/link]")
        elif name == "search":
            console.print(f"Found {len(info['items'])} scene(s)")
        elif name == "graph":
            m = info["mosaic"]
            console.print(f"Mosaic {m.sizes['y']}×{m.sizes['x']} px, "
                          f"{m.attrs['s2mosaic_provenance']['observations']} observation(s) "
                          f"→ computing and writing")

    try:
        report = do_run(spec, progress=True, on_stage=on_stage)
    except S2MosaicError as e:
        raise _fail(e) from None
    console.print(f"[green]Done[/] in {report.wall_time_s:.1f} s")
    for kind, path in report.outputs.items():
        if path:
            out.print(f"{kind:>9}: {path}")


@app.command()
def run(
    spec_path: SpecArg,
    scheduler: SchedulerOpt = None,
    cluster: ClusterOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
) -> None:
    """Build the mosaic of a spec and write its outputs (Zarr / COG / display product).

    Set S2MOSAIC_WEBHOOK to a (Slack-compatible) webhook URL to be notified of the start, the
    end (with the run report) and failures.
    """
    try:
        spec = _load(spec_path, scheduler, overwrite, cluster)
    except S2MosaicError as e:
        raise _fail(e) from None
    _execute(spec)


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where the demo catalog and outputs go.")]
    = Path("s2mosaic-demo"),
    scheduler: SchedulerOpt = None,
    cluster: ClusterOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic catalog.")] = 0,
) -> None:
    """Run the offline demo: generate the synthetic catalog if missing, then mosaic it."""
    from .demo import demo_spec, make_demo_catalog

    console.print(f"Demo catalog in {directory / 'catalog'} (generated if missing)")
    catalog = make_demo_catalog(directory / "catalog", seed=seed)
    spec = demo_spec(catalog, directory / "output")
    spec_file = directory / "demo.yaml"
    spec.to_yaml(spec_file)
    console.print(f"Spec written to {spec_file}")
    try:
        spec = _with_runtime(spec, scheduler, cluster)
    except S2MosaicError as e:
        raise _fail(e) from None
    _execute(spec)


cluster_app = typer.Typer(help="Cluster profiles (cluster/*.yaml): see what they would submit.",
                          no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("script")
def cluster_script(profile: ProfileArg) -> None:
    """Print the batch job script one worker job of PROFILE would submit (submits nothing)."""
    from .cluster import job_script

    try:
        script = job_script(profile)
    except S2MosaicError as e:
        raise _fail(e) from None
    typer.echo(script)


@app.command("show-versions")
def show_versions() -> None:
    """Print versions of s2mosaic and its key dependencies (for bug reports)."""
    from . import show_versions as show

    show()


if __name__ == "__main__":  # pragma: no cover
    app()
