# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Items first: `s2mosaic.mosaic(items, ...)` and `ds.s2`
#
# No spec file: STAC items in, a lazy mosaic out, as with `odc.stac.load(items, bands, ...)`.
# And for a cube loaded elsewhere (here by `odc.stac.load` itself), the `ds.s2` accessor
# removes the BOA offsets, masks with SCL and composites: the same bytes as `s2mosaic.mosaic`.
#
# It runs on the real Sentinel-2 L2A crops in `shared/data/s2` (set `S2MOSAIC_SHARED_DATA` to
# point at them); without them, on the synthetic demo catalog.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import odc.stac
import pystac

import s2mosaic

repo = Path(s2mosaic.__file__).resolve().parents[1]
candidates = [Path(os.environ["S2MOSAIC_SHARED_DATA"])] if "S2MOSAIC_SHARED_DATA" in os.environ else []
candidates.append(repo.parent / "shared" / "data" / "s2")
catalog = next((c / "catalog.json" for c in candidates if (c / "catalog.json").exists()), None)
if catalog is not None:  # two real L2A crops near Lago di Barbellino, 2017 (cloudy) and 2019
    pick, bbox, epsg = "Barbellino", [10.0416, 46.0641, 10.0448, 46.0679], 32632
else:  # no real data here: the synthetic demo catalog (two UTM zones, a BOA offset, a duplicate)
    from s2mosaic.demo import DEMO_AOI_BBOX, make_demo_catalog

    workdir = Path(os.environ.get("S2MOSAIC_NOTEBOOK_DIR", "s2mosaic-demo"))
    catalog = make_demo_catalog(workdir / "catalog", size=300)
    pick, bbox, epsg = "", list(DEMO_AOI_BBOX), 32632

# (s2mosaic.mosaic drops older processings of one acquisition itself; odc-stac would fuse them
# with the newest, so they are left out here: the demo's S2B_32TQT_20240621_0_L2A)
items = [i for i in pystac.Catalog.from_file(str(catalog)).get_items(recursive=True)
         if i.collection_id == "sentinel-2-l2a" and pick in i.id
         and i.id != "S2B_32TQT_20240621_0_L2A"]
for item in items:
    item.make_asset_hrefs_absolute()
print(catalog, [i.id for i in items])

# %% [markdown]
# ## The mosaic, straight from the items
# Dedupe (reprocessed products) and harmonisation (BOA offsets) are applied to the items;
# `period` comes from their dates, the grid from `crs`/`resolution`/`bbox`.

# %%
mosaic = s2mosaic.mosaic(items, bands=["red", "nir"], crs=f"EPSG:{epsg}", resolution=10,
                         bbox=bbox, chunks=64, method="percentile", q=25)
mosaic

# %% [markdown]
# ## The same with `odc.stac.load` and `ds.s2`
# Load the cube yourself (time in one chunk), then harmonise and composite it. To compare
# byte for byte, `s2mosaic.mosaic` is given the very grid odc-stac chose (`geobox=`).

# %%
ds = odc.stac.load(items, bands=["B04", "B08", "SCL"], crs=f"EPSG:{epsg}", resolution=10,
                   bbox=bbox, chunks={"time": -1, "x": 64, "y": 64}, groupby="solar_day")
composite = ds.s2.harmonise(items).s2.composite(method="percentile", q=25).compute()
same_grid = s2mosaic.mosaic(items, bands=["B04", "B08"], geobox=ds.odc.geobox, chunks=64,
                            q=25).compute()
for band in ("B04", "B08", "count"):
    np.testing.assert_array_equal(composite[band].values, same_grid[band].values)
print("identical:", composite.sizes, "valid observations up to", int(composite["count"].max()))

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
ds.s2.valid().mean("time").plot(ax=axes[0], vmin=0, vmax=1)
axes[0].set_title("clear fraction (ds.s2.valid)")
composite.B08.plot(ax=axes[1], cmap="Greens")
axes[1].set_title("NIR, 25th percentile")
composite["count"].plot(ax=axes[2], cmap="viridis")
axes[2].set_title("valid observations")
plt.tight_layout()
plt.show()
assert int(composite["count"].max()) > 0
