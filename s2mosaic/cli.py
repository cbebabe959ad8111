"""The ``s2mosaic`` command: a thin layer over the Python API."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from .errors import S2MosaicError

if TYPE_CHECKING:  # the library is imported inside the commands: `s2mosaic --help` stays quick
    from ._spec import MosaicSpec

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
    typer.Option("--cluster", help="Cluster profile: a YAML file, or a packaged one by name (local, "
                 "slurm-cpu, slurm-gpu, pbs; `s2mosaic cluster init` copies one to edit): start a "
                 "LocalCluster or dask-jobqueue workers (SLURM, PBS, ...) for the run. Default: "
                 "the spec's runtime.cluster.", show_default=False),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="Where masking and compositing run: auto (GPU when the workers "
                 "have a GPU resource and CuPy, else CPU), cpu or gpu (fail if impossible). "
                 "Default: the spec's runtime.device.", show_default=False),
]

ProfileArg = Annotated[Path, typer.Argument(help="Cluster profile: a YAML file, or a packaged "
                                            "one by name, e.g. slurm-gpu.", show_default=False)]


def _flag(*decls: str, help: str) -> Any:
    """A boolean option that takes no value (no ``<bool>`` after it in the help)."""
    return typer.Option(*decls, help=help, metavar="")


def _fail(e: Exception) -> typer.Exit:
    # Messages quote values such as [10.0, 46.0, ...]: print them as text, never as Rich markup.
    console.print(Text.assemble(("error:", "bold red"), " ", str(e)))
    return typer.Exit(code=2)


def _load(path: Path, scheduler: str | None = None, overwrite: bool = False,
          cluster: Path | None = None, device: str | None = None) -> MosaicSpec:
    from ._spec import MosaicSpec

    spec = _with_runtime(MosaicSpec.from_yaml(path), scheduler, cluster)
    if device is not None:
        if device not in ("auto", "cpu", "gpu"):
            raise typer.BadParameter(f"{device!r} is not a device; use auto, cpu or gpu",
                                     param_hint="--device")
        spec = spec.replace(runtime=dataclasses.replace(spec.runtime, device=device))
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
           as_json: Annotated[bool, _flag("--json", help="Print JSON, not a table.")] = False,
           ) -> None:
    """List the scenes the spec's search finds (after filters and de-duplication)."""
    from rich.table import Table

    from ._items import boa_offset, format_baseline, item_datetime, mgrs_tile, resolve_band
    from ._search import search as do_search

    try:
        spec = _load(spec_path)
        items = do_search(spec)
    except S2MosaicError as e:
        raise _fail(e) from None
    if as_json:
        out.print_json(json.dumps({
            "query": items.query,
            "items": [{"id": i.id, "datetime": str(item_datetime(i)), "mgrs_tile": mgrs_tile(i),
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
        table.add_row(Text(i.id), str(item_datetime(i))[:19], escape(mgrs_tile(i) or "?"),
                      f"{cc:.1f}" if isinstance(cc, int | float) else "?",
                      format_baseline(i).replace("unknown", "?"),
                      str(boa_offset(i, resolve_band(i, band_key))))
    out.print(table)
    for d in items.dropped:
        out.print(Text(f"dropped {d.id}: {d.reason}", style="dim"))


#: Exit code of a run that completed without some scenes it could not read.
EXIT_DEGRADED = 3

RetryDroppedOpt = Annotated[bool, _flag(
    "--retry-dropped", help="With --resume: also recompute the tiles an earlier run completed "
    "without scenes it could not read (degraded), reading those scenes again.")]


def _execute(spec: MosaicSpec, resume: bool = False, runner: Any = None,
             retry_dropped: bool = False) -> None:
    """Run ``runner`` (default :func:`s2mosaic.run`; or a series / gap-fill run with the same
    arguments) with progress, stage messages and the run report's summary. Exit code 2 when
    tiles failed, 3 when the run completed with scenes dropped (``runtime.on_read_error:
    skip``)."""
    from ._run import report_path
    from ._run import run as do_run
    from .errors import DroppedScenesWarning

    def on_stage(name: str, info: dict[str, Any]) -> None:
        if name == "cluster":
            link = info.get("dashboard")
            console.print(f"Dask cluster: {info.get('cluster')}")
            if link:
                console.print(f"Dask dashboard: [link={link}]{link}[/link]")
        elif name == "search":
            console.print(f"Found {len(info['items'])} scene(s)")
        elif name == "plan":
            h, w = info["shape"]
            done = info["tiles"] - info["todo"]
            kind = {"series": "Series", "gapfill": "Gap-fill"}.get(info.get("kind", ""), "Mosaic")
            console.print(f"{kind} {h}×{w} px, {info['observations']} observation(s), "
                          f"{info['tiles']} tile(s)" + (f", {done} already done" if done else "")
                          + f" → {info['store']} ({info['limit']} tile(s) at a time)")
        elif name == "dropped":
            console.print(Text.assemble(
                (f"tile {info['tile']}: dropped scene {info['item']}", "yellow"),
                f" (asset {info['asset']}, could not read {info['url']}: {info['error']})"))
        elif name == "tiles" and info["failed"]:
            for key, err in info["failed"].items():
                console.print(Text.assemble((f"tile {key} failed:", "red"), f" {err}"))

    try:
        with warnings.catch_warnings():  # said below, with the summary
            warnings.simplefilter("ignore", DroppedScenesWarning)
            report = (runner or do_run)(spec, progress=True, on_stage=on_stage, resume=resume,
                                        retry_dropped=retry_dropped)
    except S2MosaicError as e:
        raise _fail(e) from None
    t = report.tiles
    _report_outputs(report, f": {t['computed']} tile(s) computed, {t['resumed']} resumed, "
                            f"{t['empty']} empty, {t['retried']} retried")
    out.print(f"{'report':>9}: {report_path(spec.output)}")
    if report.scenes_dropped:
        for d in report.scenes_dropped:
            out.print(Text(f"  dropped {d['item']} (asset {d['asset']}) from {len(d['tiles'])} "
                           f"tile(s), {d['pixels'] if d['pixels'] is not None else '?'} px: "
                           f"{d['url']}: {d['error']}"))
        n = report.scenes_dropped_count
        console.print(Text.assemble(
            (f"complete with {n} scene{'s' if n != 1 else ''} dropped", "bold yellow"),
            f" ({t['degraded']} degraded tile(s)); once they can be read, rerun with "
            "--resume --retry-dropped"))
        raise typer.Exit(code=EXIT_DEGRADED)


@app.command()
def run(
    spec_path: SpecArg,
    scheduler: SchedulerOpt = None,
    cluster: ClusterOpt = None,
    overwrite: Annotated[bool, _flag("--overwrite", help="Replace existing outputs.")] = False,
    resume: Annotated[bool, _flag(
        "--resume", help="Continue an interrupted run: tiles already in the Zarr store (checked "
        "against their digests) are skipped, the rest computed.")] = False,
    retry_dropped: RetryDroppedOpt = False,
    device: DeviceOpt = None,
) -> None:
    """Build the mosaic of a spec tile by tile and write its outputs (Zarr / COG / display
    product) plus a run report.

    Set S2MOSAIC_WEBHOOK to a (Slack-compatible) webhook URL to be notified of the start, the
    end (with the run report) and failures.
    """
    try:
        spec = _load(spec_path, scheduler, overwrite, cluster, device)
    except S2MosaicError as e:
        raise _fail(e) from None
    _execute(spec, resume, retry_dropped=retry_dropped)


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where the demo catalog and outputs go.")]
    = Path("s2mosaic-demo"),
    scheduler: SchedulerOpt = None,
    cluster: ClusterOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic catalog.")] = 0,
    device: DeviceOpt = None,
) -> None:
    """Run the offline demo: generate the synthetic catalog if missing, then mosaic it.

    The spec it runs is written to DIR/demo.yaml, its paths relative to that file: rerun it
    from anywhere with `s2mosaic run DIR/demo.yaml`.
    """
    import os

    from .demo import demo_spec, make_demo_catalog

    console.print(f"Demo catalog in {directory / 'catalog'} (generated if missing)")
    catalog = make_demo_catalog(directory / "catalog", seed=seed)
    spec_file = directory / "demo.yaml"
    # Relative to the spec's directory, as MosaicSpec.from_yaml resolves them.
    demo_spec(os.path.relpath(catalog, directory), "output").to_yaml(spec_file)
    console.print(f"Spec written to {spec_file} (rerun it with `s2mosaic run {spec_file}`)")
    try:
        spec = _load(spec_file, scheduler, cluster=cluster, device=device)
    except S2MosaicError as e:
        raise _fail(e) from None
    _execute(spec)


@app.command()
def plan(
    spec_path: SpecArg,
    cluster: ClusterOpt = None,
    cores: Annotated[int | None, typer.Option(help="Cores to plan for (default: --cluster, else "
                                              "the spec's runtime).", show_default=False)] = None,
    cost: Annotated[float | None, typer.Option("--cost-per-core-hour", help="Price of one core "
                                               "for an hour, for the cost estimate.",
                                               show_default=False)] = None,
    remote: Annotated[bool, _flag("--remote", help="Open remote COG headers to size "
                                         "reads exactly (network requests).")] = False,
    as_json: Annotated[bool, _flag("--json", help="Print JSON, not a table.")] = False,
) -> None:
    """Estimate scenes, bytes to read, output size, wall time and cost, reading no pixels."""
    from ._plan import plan as do_plan

    try:
        p = do_plan(_load(spec_path), cores=cores, cluster=cluster, cost_per_core_hour=cost,
                    remote=remote)
    except S2MosaicError as e:
        raise _fail(e) from None
    if as_json:
        out.print_json(p.to_json())
    else:
        out.print(p.table())


@app.command()
def preview(
    spec_path: SpecArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML map to write.")]
    = Path("preview.html"),
    png: Annotated[Path | None, typer.Option("--png", help="Static PNG to write (default: the "
                                             "HTML path with .png).", show_default=False)] = None,
    tiles: Annotated[str | None, typer.Option("--tiles", help="Basemap: a name such as "
                                              "OpenStreetMap or an XYZ URL (needs internet when "
                                              "viewed). Default: none.", show_default=False)] = None,
    attribution: Annotated[str | None, typer.Option(help="Attribution of a --tiles URL.",
                                                    show_default=False)] = None,
    remote: Annotated[bool, _flag("--remote", help="Read quicklooks of remote assets "
                                         "(network requests).")] = False,
) -> None:
    """Write a quicklook map (HTML, works offline) and a PNG of the scenes the spec would use."""
    from ._preview import preview as do_preview

    try:
        r = do_preview(_load(spec_path), output, png=png or output.with_suffix(".png"),
                       tiles=tiles, attribution=attribution, remote=remote)
    except S2MosaicError as e:
        raise _fail(e) from None
    console.print(f"{r.scenes} scene(s), {r.selected} selected, {r.quicklooks} quicklook(s)")
    for path in (r.html, r.png):
        out.print(str(path))


cluster_app = typer.Typer(help="Cluster profiles (local, slurm-cpu, slurm-gpu, pbs, or your own "
                          "YAML): copy one to edit, see what it would submit.",
                          no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("script")
def cluster_script(profile: ProfileArg) -> None:
    """Print the batch job script one worker job of PROFILE would submit (submits nothing)."""
    from ._cluster import job_script

    try:
        script = job_script(profile)
    except S2MosaicError as e:
        raise _fail(e) from None
    typer.echo(script)


@cluster_app.command("init")
def cluster_init(
    name: Annotated[str, typer.Argument(help="Packaged profile: local, slurm-cpu, slurm-gpu or "
                                        "pbs.", show_default=False)],
    dest: Annotated[Path | None, typer.Argument(help="Where to write it (a file, or a directory "
                                                "for NAME.yaml). Default: ./NAME.yaml.",
                                                show_default=False)] = None,
) -> None:
    """Copy the packaged profile NAME to DEST to edit (refuses to overwrite a file)."""
    from ._profile import packaged_profile

    try:
        source = packaged_profile(name)
    except S2MosaicError as e:
        raise _fail(e) from None
    target = Path(f"{name}.yaml") if dest is None else dest
    if target.is_dir():
        target = target / f"{name}.yaml"
    if target.exists():
        console.print(f"[bold red]error:[/] {target} already exists; not overwriting it: edit it, "
                      "remove it, or give another DEST")
        raise typer.Exit(code=2)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source.read_text())
    out.print(str(target))


@app.command("show-versions")
def show_versions() -> None:
    """Print versions of s2mosaic and its key dependencies (for bug reports)."""
    from . import show_versions as show

    show()


def _report_outputs(report: Any, summary: str = "") -> None:
    console.print(f"[green]Done[/] in {report.wall_time_s:.1f} s{summary}")
    for kind, path in report.outputs.items():
        if path:
            out.print(f"{kind:>9}: {path}")


@app.command()
def series(
    spec_path: SpecArg,
    scheduler: SchedulerOpt = None,
    cluster: ClusterOpt = None,
    overwrite: Annotated[bool, _flag("--overwrite", help="Replace existing outputs.")] = False,
    resume: Annotated[bool, _flag(
        "--resume", help="Continue an interrupted series: tiles already in the Zarr store "
        "(checked against their digests) are skipped, the rest computed.")] = False,
    retry_dropped: RetryDroppedOpt = False,
) -> None:
    """Build one composite per period of the spec's series.periods (monthly, quarterly, 'every
    N days' or a list) tile by tile into one Zarr with a time dimension, plus a COG per period
    when output.cog is set, and a run report (like `run`: tiles, retries, --resume)."""
    from ._timeseries_run import run_series
    from .errors import SpecError

    try:
        spec = _load(spec_path, scheduler, overwrite, cluster)
        if spec.series.periods is None:
            raise SpecError("series.periods", None, "set series.periods in the spec (monthly, "
                            "quarterly, yearly, 'every N days' or a list of [start, end]) to "
                            "build a series; `s2mosaic run` builds a single mosaic")
        rule = spec.series.periods
        console.print(f"Series of {len(spec.series.expand(spec.period))} period(s) "
                      f"({rule if isinstance(rule, str) else 'explicit list'})")
    except S2MosaicError as e:
        raise _fail(e) from None
    _execute(spec, resume, run_series, retry_dropped)


@app.command()
def gapfill(
    spec_path: SpecArg,
    damping: Annotated[float, typer.Option(help="Smoothing weight lambda (> 0).")] = 0.1,
    duration: Annotated[int, typer.Option(help="Window length in days.")] = 48,
    overlap: Annotated[float, typer.Option(help="Overlap of consecutive windows, [0, 1).")] = 0.5,
    step: Annotated[int, typer.Option(help="Output every STEP days (1: daily).")] = 1,
    normalise: Annotated[bool, _flag("--normalise", help="Per-date illumination "
                                            "normalisation (clear-pixel mean per date).")] = False,
    scheduler: SchedulerOpt = None,
    cluster: ClusterOpt = None,
    overwrite: Annotated[bool, _flag("--overwrite", help="Replace existing outputs.")] = False,
    resume: Annotated[bool, _flag(
        "--resume", help="Continue an interrupted gap-fill with the same parameters: tiles "
        "already in the Zarr store are skipped, the rest computed.")] = False,
    retry_dropped: RetryDroppedOpt = False,
) -> None:
    """Daily (or every-STEP-day) cloud-free rasters over the spec's period by damped temporal
    interpolation (SpaceEye), computed tile by tile into output.zarr with a time dimension,
    with a run report (like `run`: tiles, retries, --resume)."""
    from ._gapfill import GapFill
    from ._timeseries_run import run_gapfill

    try:
        spec = _load(spec_path, scheduler, overwrite, cluster)
        params = GapFill(damping=damping, duration=duration, overlap=overlap, step=step,
                         normalise=normalise)
    except S2MosaicError as e:
        raise _fail(e) from None
    _execute(spec, resume, lambda s, **kw: run_gapfill(s, params, **kw), retry_dropped)


@app.command()
def batch(
    batch_path: Annotated[Path, typer.Argument(help="Batch file (YAML): jobs, defaults, "
                                               "max_concurrent, retries, runtime.",
                                               show_default=False)],
    max_concurrent: Annotated[int | None, typer.Option(
        "--max-concurrent", help="Jobs running at once (default: the file's, else 2).")] = None,
    retries: Annotated[int | None, typer.Option(
        help="Extra attempts per failed job (default: the file's, else 1).")] = None,
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Also write the summary as JSON to this file.")] = None,
    scheduler: SchedulerOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Run many jobs (AOIs x periods) on one cluster, at most --max-concurrent at a time.

    A failing job never stops the others; the summary table lists every job's status, and the
    exit code is 1 when any job failed.
    """
    from ._batch import load_batch, run_many
    from ._spec import RuntimeSpec

    if scheduler is not None and cluster is not None:
        raise typer.BadParameter("give --scheduler or --cluster, not both", param_hint="--cluster")
    try:
        bf = load_batch(batch_path)
        runtime = bf.runtime or RuntimeSpec()
        if scheduler is not None or cluster is not None:
            runtime = RuntimeSpec(chunks=runtime.chunks, scheduler=scheduler,
                                  cluster=cluster.resolve() if cluster is not None else None)
        bf = dataclasses.replace(
            bf, runtime=runtime,
            max_concurrent=bf.max_concurrent if max_concurrent is None else max_concurrent,
            retries=bf.retries if retries is None else retries)
        console.print(f"{len(bf.jobs)} job(s), at most {bf.max_concurrent} at once")

        def on_update(r: Any) -> None:
            if r.status in ("done", "failed"):
                colour = "green" if r.status == "done" else "red"
                console.print(f"[{colour}]{r.status}[/] {r.name}"
                              + (f": {r.error}" if r.error else ""))

        report = run_many(bf, on_update=on_update)
    except S2MosaicError as e:
        raise _fail(e) from None
    out.print(report.table())
    if json_path is not None:
        json_path.write_text(report.to_json() + "\n")
        console.print(f"Summary written to {json_path}")
    if not report.ok:
        raise typer.Exit(code=1)


@app.command()
def export(
    store: Annotated[Path, typer.Argument(help="A mosaic Zarr store (from `s2mosaic run`).",
                                          show_default=False)],
    cog: Annotated[Path | None, typer.Option("--cog", help="Write one COG here.")] = None,
    tiles_dir: Annotated[Path | None, typer.Option(
        "--tiles", help="Write one COG per tile plus mosaic.vrt into this directory.")] = None,
    tile_size: Annotated[int, typer.Option(help="Tile size in pixels for --tiles.")] = 8192,
    overwrite: Annotated[bool, _flag("--overwrite", help="Replace existing files.")] = False,
) -> None:
    """Stream a COG (overviews, BIGTIFF when needed) or per-tile COGs + a VRT from a Zarr store,
    without loading it whole."""
    from ._export import export_cog, export_tiles
    from ._raster import interactive

    if cog is None and tiles_dir is None:
        raise typer.BadParameter("give --cog and/or --tiles", param_hint="--cog")
    try:
        if cog is not None:
            export_cog(store, cog, overwrite=overwrite, progress=interactive())
            out.print(f"cog: {cog}")
        if tiles_dir is not None:
            vrt = export_tiles(store, tiles_dir, tile_size, overwrite=overwrite)
            out.print(f"vrt: {vrt}")
    except S2MosaicError as e:
        raise _fail(e) from None


@app.command()
def chips(
    spec_path: SpecArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the chips and "
                                         "manifest.jsonl.", show_default=False)],
    points: Annotated[Path | None, typer.Option(
        "--points", help="Chips around points: a CSV with lon,lat columns or a GeoJSON of "
        "points. Default: a regular grid of chips over the spec's AOI.")] = None,
    resolution: Annotated[float, typer.Option(help="Pixel size (m).")] = 10.0,
    size: Annotated[int, typer.Option(help="Chip size (pixels).")] = 256,
    pad: Annotated[int, typer.Option(help="Extra pixels each side.")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="tif or png.")] = "tif",
    batch: Annotated[int, typer.Option(help="Chips per Dask graph.")] = 64,
    scheduler: SchedulerOpt = None,
    cluster: ClusterOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Write many small fixed-size chips (GeoTIFF/PNG + manifest.jsonl), keyed like
    DLTile.from_latlon; a rerun skips the chips already written."""
    from ._chips import chip_at, chips_over, make_chips
    from ._cluster import make_client

    try:
        spec = _load(spec_path, scheduler, False, cluster, device)
        if points is None:
            todo = chips_over(spec.aoi.geometry, resolution=resolution, size=size, pad=pad)
        else:
            todo = [chip_at(lon, lat, resolution=resolution, size=size, pad=pad)
                    for lon, lat in _read_points(points)]
            todo = list({c.key: c for c in todo}.values())  # points sharing a chip: one chip
        console.print(f"{len(todo)} chip(s) → {output}")
        with make_client(spec.runtime) as client:
            report = make_chips(spec, todo, output, fmt=fmt, batch=batch, client=client,
                                on_batch=lambda d, t: console.print(f"  {d}/{t} chips"))
    except S2MosaicError as e:
        raise _fail(e) from None
    console.print(f"[green]Done[/]: {report.written} written, {report.skipped} already there, "
                  f"{report.batches} batch(es)")
    out.print(f"manifest: {report.manifest}")


def _read_points(path: Path) -> list[tuple[float, float]]:
    """(lon, lat) pairs from a CSV (lon/lat or longitude/latitude columns) or GeoJSON points."""
    import csv

    from .errors import SpecError

    if path.suffix.lower() in (".geojson", ".json"):
        doc = json.loads(path.read_text())
        feats = doc.get("features", [doc])
        pts = [f.get("geometry", f) for f in feats]
        bad = [p for p in pts if p.get("type") != "Point"]
        if bad:
            raise SpecError("chips.points", bad[0].get("type"), "GeoJSON Point geometries")
        return [(float(p["coordinates"][0]), float(p["coordinates"][1])) for p in pts]
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SpecError("chips.points", str(path), "a CSV with a header and lon,lat rows")
    cols = {c.lower(): c for c in rows[0]}
    lon = cols.get("lon") or cols.get("longitude") or cols.get("x")
    lat = cols.get("lat") or cols.get("latitude") or cols.get("y")
    if lon is None or lat is None:
        raise SpecError("chips.points", list(rows[0]), "CSV columns lon,lat (or longitude,"
                        "latitude)")
    return [(float(r[lon]), float(r[lat])) for r in rows]


if __name__ == "__main__":  # pragma: no cover
    app()
