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
# # The deep linear autoencoder: found points against the exact ones
#
# Frye et al.'s setting (`experiments/linear_autoencoder.toml`): every critical point is known
# exactly (docs/science.md §3), so each point a finder returns can be checked. Set
# `SADDLESTUDY_RESULTS_ROOT` to the results directory of `scripts/reproduce_paper.sh`
# (default `results`; `results_quick` after `--quick`).

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from saddlestudy import analysis  # noqa: E402

root = Path(os.environ.get("SADDLESTUDY_RESULTS_ROOT", "results"))
df = analysis.load(root / "linear_autoencoder")
ref = analysis.exact_reference(df)  # every exact critical point of this autoencoder
print(f"{len(df)} points in {root / 'linear_autoencoder'}; {len(ref)} exact critical points")

# %% [markdown]
# A found point is *exact* when its loss and its number of negative eigenvalues are those of
# one of the exact critical points.

# %%
df["exact"] = analysis.exact_matches(df, ref)
summary = df.groupby(["finder_method", "status"], observed=True).agg(
    points=("exact", "size"), exact=("exact", "sum"), median_grad_norm_sq=("grad_norm_sq", "median")
)
print(summary)

# %% [markdown]
# A custom figure: index against loss for each finder, exact points behind.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True, layout="constrained")
for ax, (method, group) in zip(axes, df.groupby("finder_method")):
    ax.scatter(ref["loss"], ref["index"], marker="+", color="0.75", label="exact")
    ax.scatter(group["loss"], group["index"], c=np.log10(group["grad_norm_sq"]), s=18)
    ax.set_title(method)
    ax.set_xlabel("loss")
axes[0].set_ylabel("index")
axes[0].legend()
