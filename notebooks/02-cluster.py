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
# # s2mosaic on a cluster
#
# Connect to a Dask cluster from a **cluster profile**, run a mosaic on it while watching the
# progress, and look at the result.
#
# A profile (`s2mosaic/profiles/*.yaml`, chosen by name) says what to start: `local` is a `LocalCluster` on
# this machine (the default here, offline); `slurm-cpu`, `slurm-gpu`
# and `pbs` submit Dask workers as batch jobs through dask-jobqueue. To run this
# notebook on an HPC login node, edit the queue/account/environment lines of one of them and set
# `S2MOSAIC_CLUSTER_PROFILE=slurm-cpu` (or your own YAML) before starting Jupyter.
#
# `S2MOSAIC_NOTEBOOK_DIR` chooses where files go (default: `./s2mosaic-demo`).

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from distributed import progress

import s2mosaic
from s2mosaic import gpu_resources, job_script, load_profile, make_client
from s2mosaic.demo import demo_spec, make_demo_catalog

profile = load_profile(os.environ.get("S2MOSAIC_CLUSTER_PROFILE") or "local")  # packaged, by name
print(profile.describe())
print(profile.to_yaml())

# %% [markdown]
# For a batch-system profile, this is the job script each worker job runs (`s2mosaic cluster
# script PROFILE` prints the same); nothing has been submitted yet.

# %%
if profile.kind != "local":
    print(job_script(profile))
else:
    print("a local profile: the workers are processes on this machine, no job script")

# %% [markdown]
# ## Connect
# `make_client` starts the cluster (submitting jobs for a batch profile), scales it as the profile
# says and waits for the first worker. The client below links to the **Dask dashboard**.

# %%
conn = make_client(profile)
client = conn.client
print("GPU workers:", gpu_resources(client) or "none (GPU tasks would run on CPU)")
client

# %% [markdown]
# ## Build the mosaic and compute it on the cluster
# The synthetic demo catalog (two UTM zones, clouds marked in SCL) stands in for a real STAC
# search. `persist` starts the computation on the workers; `progress` follows it.

# %%
workdir = Path(os.environ.get("S2MOSAIC_NOTEBOOK_DIR", "s2mosaic-demo"))
catalog = make_demo_catalog(workdir / "catalog")
spec = demo_spec(catalog, workdir / "cluster-output")
items = s2mosaic.search(spec)
mosaic = client.persist(s2mosaic.mosaic(spec, items=items))
progress(mosaic, notebook=False)  # a text bar; in JupyterLab with ipywidgets, drop notebook=False

# %% [markdown]
# ## Write Zarr + COG + metadata from the workers, then look at it

# %%
result = s2mosaic.write(mosaic, spec.output, client=client)
print(result)

out = xr.open_zarr(result.zarr)
rgb = np.stack([out[b].values for b in ("red", "green", "blue")], axis=-1).astype("float32")
fig, axes = plt.subplots(1, 2, figsize=(12, 5))
axes[0].imshow(np.clip(rgb / 3000, 0, 1))
axes[0].set_title(f"{spec.composite.method} {spec.composite.q:g} composite (RGB)")
im = axes[1].imshow(out["count"].values, cmap="viridis")
axes[1].set_title("valid observations per pixel")
fig.colorbar(im, ax=axes[1])
for ax in axes:
    ax.set_axis_off()
plt.show()
assert int(out["count"].max()) > 0

# %% [markdown]
# ## Close
# Closing the connection closes the client and the cluster it started; for a batch profile that
# cancels the worker jobs.

# %%
conn.close()
