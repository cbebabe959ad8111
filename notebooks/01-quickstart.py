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
# # s2mosaic quick start
#
# This notebook runs offline: it generates the synthetic Sentinel-2 L2A demo catalog (two UTM
# zones, clouds and shadows marked in SCL), searches it, builds the lazy mosaic on a Dask
# `LocalCluster`, writes Zarr + COG, and shows the result.
#
# Set `S2MOSAIC_NOTEBOOK_DIR` to choose where files go (default: `./s2mosaic-demo`).

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from distributed import Client, LocalCluster

import s2mosaic
from s2mosaic.demo import demo_spec, make_demo_catalog

workdir = Path(os.environ.get("S2MOSAIC_NOTEBOOK_DIR", "s2mosaic-demo"))
catalog = make_demo_catalog(workdir / "catalog")
spec = demo_spec(catalog, workdir / "notebook-output")
print(spec.to_yaml())

# %% [markdown]
# ## Search
# `search` returns plain `pystac.Item`s, sorted by time; what it dropped (e.g. a reprocessed
# duplicate) and why is kept in `.dropped`.

# %%
items = s2mosaic.search(spec)
for item in items:
    print(item.id, item.datetime.date(), item.properties["eo:cloud_cover"])
print("dropped:", items.dropped)

# %% [markdown]
# ## The lazy mosaic
# Nothing has been read yet: `mosaic` is a Dask graph with one reduction task per spatial chunk.

# %%
cluster = LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=":0")
client = Client(cluster)
print("Dask dashboard:", client.dashboard_link)
mosaic = s2mosaic.mosaic(spec, items=items)
mosaic

# %% [markdown]
# ## Write Zarr + COG + metadata, then look at it

# %%
result = s2mosaic.write(mosaic, spec.output, client=client)
print(result)

# %%
import xarray as xr  # noqa: E402

out = xr.open_zarr(result.zarr)
rgb = np.stack([out[b].values for b in ("red", "green", "blue")], axis=-1).astype("float32")
rgb = np.clip(rgb / 3000, 0, 1)
fig, axes = plt.subplots(1, 2, figsize=(12, 5))
axes[0].imshow(rgb)
axes[0].set_title(f"{spec.composite.method} {spec.composite.q:g} composite (RGB)")
im = axes[1].imshow(out["count"].values, cmap="viridis")
axes[1].set_title("valid observations per pixel")
fig.colorbar(im, ax=axes[1])
for ax in axes:
    ax.set_axis_off()
plt.show()
assert int(out["count"].max()) > 0

# %%
client.close()
cluster.close()
