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
# # Exploring a study
#
# Load a results store written by `python -m saddlestudy.sweep`, look at the census of critical
# points, and make a custom figure. Set `SADDLESTUDY_RESULTS` to a study directory
# (default: `results/default`, what `python -m saddlestudy.sweep` writes).

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from saddlestudy import analysis, store  # noqa: E402

study_dir = Path(os.environ.get("SADDLESTUDY_RESULTS", "results/default"))
df = analysis.load(study_dir)
print(f"{len(df)} points in {study_dir}; columns include:", ", ".join(df.columns[:12]), "...")

# %% [markdown]
# Every point has a status: converged (a true critical point to the finder's tolerance),
# gradient-flat, or not converged. The aggregates below use converged points only and say how
# many of each status there were.

# %%
print(df.groupby(["num_params", "status"], observed=True).size().unstack(fill_value=0))

# %% [markdown]
# Each point is classified from the bounds the sweep stored on its number of negative
# eigenvalues: a minimum only when none is certified below -1e-5, a saddle when one is, and
# undetermined when the bounds straddle 0 (only where the counts are not exact).

# %%
df["kind"] = analysis.classify(df)
print(df[df["status"] == "converged"].groupby("num_params")["kind"].value_counts().unstack())
minima = analysis.fraction_minima(df)
print(
    minima[
        [
            "num_params",
            "num_points",
            "num_converged",
            "num_minima",
            "fraction_minima",
            "ci_low",
            "ci_high",
            "fraction_undetermined",
        ]
    ]
)

# %%
index = analysis.index_summary(df)
print(index[["num_params", "num_converged", "median_index", "ci_low", "ci_high", "median_loss"]])

# %% [markdown]
# A custom figure: the smallest Hessian eigenvalue of every converged point against its loss,
# from the stored columns, and one full spectrum read back from the store (stored only where
# all P eigenvalues were computed: `spectrum_method == "eigh"`). `lambda_min` is stored only
# where it is certified (dense and eigh rows, within `lambda_min_lo` … `lambda_min_hi`);
# matrix-free rows have NaN there and a Ritz value in `ritz_min` (an upper bound of λ_min),
# so they are drawn as their certified upper bound `lambda_min_hi`, hollow.

# %%
conv = df[df["status"] == "converged"]
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
known = conv[conv["lambda_min"].notna()]
sc = left.scatter(known["loss"], known["lambda_min"], c=known["num_params"], cmap="viridis", s=14)
if "lambda_min_hi" in conv:
    bound = conv[conv["lambda_min"].isna() & conv["lambda_min_hi"].notna()]
    left.scatter(bound["loss"], bound["lambda_min_hi"], facecolors="none", edgecolors="gray",
                 s=14, label="upper bound only")  # fmt: skip
left.set_xlabel("loss")
left.set_ylabel("λ_min (certified)")
fig.colorbar(sc, ax=left, label="P")
full = df[df["spectrum_method"] == "eigh"] if "spectrum_method" in df else df
pick = conv[conv["row_id"].isin(full["row_id"])]
row = pick.sort_values("loss").iloc[0] if len(pick) else df.iloc[0]
eig = store.load_spectrum(study_dir.parent, study_dir.name, row["row_id"]).get("eigenvalues")
if eig is not None:
    right.hist(eig, bins=50)
    right.set_yscale("log")
right.set_xlabel(f"eigenvalues at {row['row_id']} (P = {row['num_params']})")
print("lowest-loss converged point:", row["row_id"], "loss", row["loss"], "index", row["index"])
