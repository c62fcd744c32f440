"""Trajectory profiles: sensitivity along ellipses through (or away from) the data."""

from __future__ import annotations

import numpy as np
import pandas as pd

PROFILE_VALUES: tuple[str, ...] = ("jacobian_softmax", "transition_density")
COLUMNS: tuple[str, ...] = ("dataset", "checkpoint", "kind", "phase", "value", "n", "mean",
                            "median", "q25", "q75")


def trajectory_profiles(trajectories: pd.DataFrame, networks: pd.DataFrame | None = None
                        ) -> pd.DataFrame:
    """Mean, median and quartiles across networks and ellipses at each point of the ellipse.

    One row per (dataset, checkpoint, kind, phase, value): `phase` is position / k in [0, 1)
    (k = points on that ellipse), so ellipses sampled with different k line up. The dataset
    comes from `networks` (`"all"` without it; `"unknown"` for a network not in it). NaN values
    (transition density of smooth nonlinearities) are left out and `n` counts those that entered.
    """
    if trajectories.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    network_code, network_ids = pd.factorize(trajectories["network_id"])
    if networks is not None and "dataset" in networks.columns:
        lookup = pd.Series(networks["dataset"].astype(str).to_numpy(),
                           index=networks["network_id"].astype(str).to_numpy())
        dataset = lookup.reindex(network_ids.astype(str)).fillna("unknown").to_numpy()[network_code]
    else:
        dataset = np.full(len(trajectories), "all")
    keys = pd.DataFrame({
        "dataset": pd.Categorical(dataset),
        "checkpoint": trajectories["checkpoint"].astype("category"),
        "kind": trajectories["kind"].astype("category"),
        "network": network_code,
        "ellipse": trajectories["ellipse"].to_numpy(),
    })
    k = keys.groupby(list(keys.columns), observed=True)["ellipse"].transform("size")
    by = [keys["dataset"], keys["checkpoint"], keys["kind"],
          (trajectories["position"] / k).rename("phase")]
    frames = []
    for value in (v for v in PROFILE_VALUES if v in trajectories.columns):
        grouped = trajectories[value].groupby(by, observed=True, sort=True)
        stats = grouped.agg(["count", "mean", "median"])
        quartiles = grouped.quantile([0.25, 0.75]).unstack()
        frame = pd.DataFrame({
            "value": value, "n": stats["count"], "mean": stats["mean"],
            "median": stats["median"], "q25": quartiles[0.25], "q75": quartiles[0.75],
        })
        frames.append(frame[frame["n"] > 0].reset_index())
    profile = pd.concat(frames, ignore_index=True)
    for column in ("dataset", "checkpoint", "kind"):
        profile[column] = profile[column].astype(str)
    return profile[list(COLUMNS)]
