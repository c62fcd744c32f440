"""The report's figures (PNG). Built on matplotlib's object API: no pyplot, no global backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from analysis.columns import LOG_SCALE, label
from analysis.protocol import untrained
from sweep.scoring.table_schemas import TRAJECTORY_KINDS

STYLE = {
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
DPI = 110
PANEL = (5.0, 4.0)  # inches per panel
KIND_LABELS = {"random": "random ellipse", "different_class": "3 train points, different classes",
               "same_class": "3 train points, same class"}
CHECKPOINT_LABELS = {"init": "before training (init)", "end": "after training (end)"}
# Where an ellipse passes through its anchor points (positions 0, k/3, 2k/3 of k: `anchor` in
# the trajectories table), as fractions of a turn.
ANCHOR_PHASES = (0.0, 1 / 3, 2 / 3)


def gap_vs_capacity(wide: pd.DataFrame, path: Path) -> Path:
    """Gap against parameter count and against train loss (log x), one colour per data set."""
    trained = wide[~untrained(wide)]
    columns = [c for c in ("param_count", "train_loss") if c in trained.columns]
    with matplotlib.rc_context(STYLE):
        figure, axes = _figure(1, max(len(columns), 1))
        for ax, column in zip(axes[0], columns):
            _scatter_by_dataset(ax, trained, column, "gap")
        figure.suptitle(f"Generalization gap vs capacity and fit ({len(trained)} networks in the statistics)")
        return _save(figure, path)


def metric_vs_gap(wide: pd.DataFrame, correlations: pd.DataFrame, metric: str, path: Path,
                  target: str = "gap") -> Path:
    """One panel per data set (and pooled when several): metric against gap, ρ and τ in the
    title."""
    trained = wide[~untrained(wide)]
    datasets = sorted(trained["dataset"].astype(str).unique()) if "dataset" in trained else []
    panels = [*datasets, "pooled"] if len(datasets) != 1 else datasets
    stats = correlations[(correlations["metric"] == metric) & (correlations["target"] == target)]
    stats = stats.set_index(stats.columns[0])
    with matplotlib.rc_context(STYLE):
        figure, axes = _figure(1, len(panels))
        for ax, panel in zip(axes[0], panels):
            part = (trained if panel == "pooled"
                    else trained[trained["dataset"].astype(str) == panel])
            _scatter_by_dataset(ax, part, metric, target, legend=panel == "pooled")
            row = stats.loc[panel] if panel in stats.index else None
            ax.set_title(f"{panel}: {_rho_text(row)}")
        figure.suptitle(f"{metric} vs {target}")
        return _save(figure, path)


def factor_scatter(pairs: pd.DataFrame, title: str, good: str, bad: str,
                   metrics: Sequence[str], path: Path) -> Path:
    """For factor pairs: value at the hurting level against value at the good level, per quantity,
    against the diagonal (points above it: the hurting level raised the quantity)."""
    with matplotlib.rc_context(STYLE):
        figure, axes = _figure(1, len(metrics))
        for ax, metric in zip(axes[0], metrics):
            x = pairs[f"{metric}_good"].to_numpy(float, na_value=np.nan)
            y = pairs[f"{metric}_bad"].to_numpy(float, na_value=np.nan)
            finite = np.isfinite(x) & np.isfinite(y)
            log = metric in LOG_SCALE and finite.any() and (x[finite] > 0).all() and (
                y[finite] > 0).all()
            x, y = x[finite], y[finite]
            ax.scatter(x, y, s=18, alpha=0.7, edgecolors="none")
            if finite.any():
                low, high = min(x.min(), y.min()), max(x.max(), y.max())
                pad = (high / low) ** 0.05 if log else 0.05 * (high - low or 1.0)
                low, high = (low / pad, high * pad) if log else (low - pad, high + pad)
                ax.plot([low, high], [low, high], color="0.3", lw=1, ls="--", label="no change")
                ax.set_xlim(low, high)
                ax.set_ylim(low, high)
                ax.legend(loc="upper left")
            if log:
                ax.set_xscale("log")
                ax.set_yscale("log")
            above = float(np.mean(y > x)) if len(x) else np.nan
            ax.set_title(f"{metric}: {above:.0%} of {len(x)} pairs above diagonal"
                         if len(x) else f"{metric}: no pairs with values")
            ax.set_xlabel(f"{good}\n{label(metric)}")
            ax.set_ylabel(f"{bad}")
        figure.suptitle(title)
        return _save(figure, path)


def trajectory_figure(profile: pd.DataFrame, dataset: str, path: Path) -> Path:
    """Jacobian norm and transition density along the three ellipse kinds: median and the
    interquartile band across networks and ellipses, before and after training."""
    part = profile[profile["dataset"] == dataset]
    checkpoints = [c for c in ("init", "end") if c in set(part["checkpoint"])] or sorted(
        set(part["checkpoint"]))
    values = [v for v in ("jacobian_softmax", "transition_density") if v in set(part["value"])]
    with matplotlib.rc_context(STYLE):
        figure, axes = _figure(len(values), len(checkpoints), sharey="row")
        for row, value in enumerate(values):
            for col, checkpoint in enumerate(checkpoints):
                ax = axes[row][col]
                curves = part[(part["value"] == value) & (part["checkpoint"] == checkpoint)]
                for kind in [k for k in TRAJECTORY_KINDS if k in set(curves["kind"])]:
                    curve = curves[curves["kind"] == kind]
                    if value == "transition_density":
                        # Integer counts per step: their median and quartiles are mostly 0 or
                        # 1, so show the mean, averaged over 1/32 of a turn.
                        ax.plot(curve["phase"], _circular_mean(curve["mean"].to_numpy(), 32),
                                lw=1.5, label=KIND_LABELS.get(kind, kind))
                        continue
                    line, = ax.plot(curve["phase"], curve["median"], lw=1.5,
                                    label=KIND_LABELS.get(kind, kind))
                    ax.fill_between(curve["phase"], curve["q25"], curve["q75"], alpha=0.2,
                                    color=line.get_color(), lw=0)
                for anchor in ANCHOR_PHASES:
                    ax.axvline(anchor, color="0.4", lw=0.8, ls=":",
                               label="anchor points" if anchor == 0 else None)
                if value == "jacobian_softmax" and (curves["q25"] > 0).all() and len(curves):
                    ax.set_yscale("log")
                ax.set_title(CHECKPOINT_LABELS.get(checkpoint, checkpoint))
                ax.set_xlabel("position along ellipse (fraction of a turn)")
                if col == 0:
                    ax.set_ylabel(label(value) + ("\n(mean, over 1/32 turn)" if value == "transition_density" else ""))
                ax.set_xlim(0, 1)
        if values and checkpoints:
            axes[0][0].legend(loc="best")
        figure.suptitle(f"{dataset}: sensitivity along ellipses (Jacobian: median, 25–75% band)")
        return _save(figure, path)


def parallel_coordinates(wide: pd.DataFrame, hyperparams: Sequence[str], path: Path,
                         metric: str = "jacobian_softmax") -> Path | None:
    """One line per network across its hyperparameters (those that vary), then `metric` (log10)
    and the gap, coloured by gap: which settings lead where (as W&B or Optuna show a sweep);
    None when no network is left to draw (none reached the protocol's stopping point)."""
    trained = wide[~untrained(wide)]
    if trained.empty:
        return None
    columns = [*hyperparams, *(c for c in (metric, "gap") if c in trained.columns)]
    scaled, ticks = [], []
    for column in columns:
        values = trained[column]
        logged = column in LOG_SCALE or column == metric
        if logged:
            values = np.log10(values.astype(float).where(values.astype(float) > 0))
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            low, high = np.nanmin(values), np.nanmax(values)
            scaled.append((values.astype(float) - low) / (high - low or 1.0))
            shown = (10.0 ** low, 10.0 ** high) if logged else (low, high)  # the values, on a log axis
            ticks.append([(0.0, f"{shown[0]:.3g}"), (1.0, f"{shown[1]:.3g}")])
        else:  # categories, booleans: evenly spaced levels; a null (a column older files lack) is one
            text = pd.Series([str(v) if pd.notna(v) else "null" for v in values], index=values.index)
            levels = sorted(text.unique())
            code = text.map({v: i for i, v in enumerate(levels)}).astype(float)
            scaled.append(code / max(len(levels) - 1, 1))
            ticks.append([(i / max(len(levels) - 1, 1), v) for i, v in enumerate(levels)])
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(max(6.0, 1.6 * len(columns)), 5.0), dpi=DPI, layout="constrained")
        ax = figure.subplots()
        gap = trained["gap"].to_numpy(float) if "gap" in trained else np.zeros(len(trained))
        norm = matplotlib.colors.Normalize(np.nanmin(gap), np.nanmax(gap))
        cmap = matplotlib.colormaps["viridis"]
        grid = np.column_stack([s.to_numpy(float) for s in scaled]) if scaled else np.empty((len(trained), 0))
        for row, value in sorted(zip(grid, gap), key=lambda item: item[1]):
            ax.plot(range(len(columns)), row, color=cmap(norm(value)), alpha=0.6, lw=1.0)
        for x, marks in enumerate(ticks):
            for y, text in marks:
                ax.annotate(text, (x, y), xytext=(3, 0), textcoords="offset points", fontsize=8, va="center")
        ax.set_xticks(range(len(columns)), [label(c) for c in columns], rotation=20, ha="right")
        ax.set_yticks([])
        ax.set_xlim(-0.2, len(columns) - 0.6)
        figure.colorbar(matplotlib.cm.ScalarMappable(norm, cmap), ax=ax, label=label("gap"))
        ax.set_title(f"{len(trained)} networks: hyperparameters, {label(metric)} (log10) and gap")
        return _save(figure, path)


def psi_figure(granulated: pd.DataFrame, path: Path, psi: str) -> Path | None:
    """ψ per hyperparameter (bars, one group per metric) and Ψ (the row `psi`), from
    `granulated_kendall`; None when there is nothing to draw."""
    rows = granulated.dropna(subset=["tau"]) if "tau" in granulated else granulated.iloc[0:0]
    if rows.empty:
        return None
    metrics = list(dict.fromkeys(rows["metric"]))
    names = list(dict.fromkeys(h for h in rows["hyperparam"] if h != psi)) + [psi]
    width = 0.8 / len(names)
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(min(14.0, 3.0 + 1.2 * len(metrics)), 5.0), dpi=DPI, layout="constrained")
        ax = figure.subplots()
        for i, name in enumerate(names):
            part = rows[rows["hyperparam"] == name].set_index("metric")["tau"].reindex(metrics)
            ax.bar(np.arange(len(metrics)) + (i - (len(names) - 1) / 2) * width, part.to_numpy(float), width,
                   label="Ψ" if name == psi else f"ψ {label(name)}", edgecolor="black" if name == psi else None)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_xticks(range(len(metrics)), [label(m) for m in metrics], rotation=20, ha="right")
        ax.set_ylabel("granulated Kendall τ with the gap")
        ax.legend(loc="best", ncol=2)
        ax.set_title("Granulated Kendall coefficient per hyperparameter (ψ) and their mean (Ψ)")
        return _save(figure, path)


def _circular_mean(values: np.ndarray, parts: int) -> np.ndarray:
    """Moving average over 1/`parts` of a closed trajectory, wrapping around its end."""
    window = max(1, round(len(values) / parts))
    padded = np.concatenate([values[-(window // 2):] if window > 1 else values[:0], values,
                             values[: window - 1 - window // 2]])
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def slice_figure(slices: pd.DataFrame, path: Path, max_slices: int = 2) -> Path | None:
    """Linear-region maps of one network's slices before and after training; None when no
    network has slices at two checkpoints."""
    chosen = _slice_network(slices)
    if chosen is None:
        return None
    checkpoints = [c for c in ("init", "end") if c in set(chosen["checkpoint"])]
    numbers = sorted(set(chosen["slice"]))[:max_slices]
    with matplotlib.rc_context(STYLE):
        figure, axes = _figure(len(numbers), len(checkpoints), panel=(4.6, 4.6))
        for row, number in enumerate(numbers):
            for col, checkpoint in enumerate(checkpoints):
                ax = axes[row][col]
                match = chosen[(chosen["slice"] == number) & (chosen["checkpoint"] == checkpoint)]
                if match.empty:
                    ax.set_axis_off()
                    continue
                _draw_slice(ax, match.iloc[0])
                ax.set_title(f"slice {number}, {CHECKPOINT_LABELS.get(checkpoint, checkpoint)}\n"
                             f"{_region_count(match.iloc[0])} linear regions "
                             f"({_LAYERS.get(str(match.iloc[0]['layers']), 'hidden layers')})"
                             + ("\nmostly a pixel wide: colours only, no boundaries" if _crowded(match.iloc[0]) else ""))
        figure.suptitle(f"Linear regions on a plane through 3 training points "
                        f"(network {chosen['network_id'].iloc[0]})")
        return _save(figure, path)


def _draw_slice(ax: Axes, row: pd.Series) -> None:
    grid = int(row["grid"])
    regions = np.asarray(row["region"]).reshape(grid, grid)
    boundary = np.asarray(row["boundary"], dtype=bool).reshape(grid, grid)
    u_min, u_max, v_min, v_max = np.asarray(row["extent"], dtype=float)
    _, index = np.unique(regions, return_inverse=True)
    # Neighbouring regions get well-separated colours from a 20-colour qualitative map.
    colours = (index.reshape(grid, grid) * 7) % 20
    # Where most pixels are boundaries (regions about a pixel wide), black lines would hide them all.
    image = colours if _crowded(row) else np.where(boundary, np.nan, colours)
    ax.imshow(image, origin="lower", extent=(u_min, u_max, v_min, v_max), cmap=_REGION_CMAP,
              vmin=0, vmax=19, interpolation="nearest", aspect="auto")
    ax.set_facecolor("black")
    anchors = np.asarray(row["anchors"], dtype=float).reshape(3, 2)
    ax.scatter(anchors[:, 0], anchors[:, 1], s=60, c="white", edgecolors="black", zorder=3,
               label="training points")
    ax.set_xlabel("u (input-space distance along plane axis 1)")
    ax.set_ylabel("v (axis 2)")
    ax.grid(False)


_LAYERS = {"last": "last hidden layer", "all": "all hidden layers"}
_REGION_CMAP = ListedColormap(matplotlib.colormaps["tab20"].colors)
MAX_DRAWN_BOUNDARY = 0.5  # share of a slice's pixels above which its boundaries are not drawn


def _crowded(row: pd.Series) -> bool:
    return float(np.mean(row["boundary"])) > MAX_DRAWN_BOUNDARY


def _region_count(row: pd.Series) -> int:
    return len(np.unique(np.asarray(row["region"])))


def _slice_network(slices: pd.DataFrame) -> pd.DataFrame | None:
    """A network's slices to draw: of the last layer where there are, at two checkpoints where a
    network has them; rows without regions (smooth activations, weights not finite) are not drawn."""
    slices = slices[slices["region"].notna()]
    if slices.empty:
        return None
    layers = slices["layers"].astype(str)
    preferred = slices[layers == "last"] if (layers == "last").any() else slices
    per_network = preferred.groupby(preferred["network_id"].astype(str))["checkpoint"].nunique()
    candidates = per_network[per_network >= 2].index
    network = candidates[0] if len(candidates) else per_network.index[0]
    return preferred[preferred["network_id"].astype(str) == network]


def _scatter_by_dataset(ax: Axes, df: pd.DataFrame, x: str, y: str, legend: bool = True) -> None:
    xs = df[x].to_numpy(float, na_value=np.nan)
    ys = df[y].to_numpy(float, na_value=np.nan)
    finite = np.isfinite(xs) & np.isfinite(ys)
    log = x in LOG_SCALE
    hidden = int((finite & (xs <= 0)).sum()) if log else 0
    shown = finite & (xs > 0) if log else finite
    datasets = df["dataset"].astype(str).to_numpy() if "dataset" in df else np.full(len(df), "all")
    for name in sorted(set(datasets[shown])):
        keep = shown & (datasets == name)
        ax.scatter(xs[keep], ys[keep], s=14, alpha=0.6, edgecolors="none", label=name)
    if log and shown.any():
        ax.set_xscale("log")
        # labelled minor ticks collide when the data span less than a decade
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label(x) + (", log scale" if log else ""))
    ax.set_ylabel(label(y))
    missing = int((~finite).sum()) + hidden
    if missing:
        ax.text(0.99, 0.01, f"{missing} networks without a plottable value not shown",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="0.3")
    if legend and len(set(datasets[shown])) > 1:
        ax.legend(title="data set", loc="best", markerscale=1.5)


def _rho_text(row: pd.Series | None) -> str:
    if row is None or not np.isfinite(row["rho"]):
        return "ρ undefined" if row is None else f"ρ undefined (n={row['n']})"
    return f"ρ={row['rho']:.2f}, τ={row['tau']:.2f} (n={row['n']})"


def _figure(rows: int, cols: int, panel: tuple[float, float] = PANEL, sharey: str | bool = False
            ) -> tuple[Figure, list[list[Axes]]]:
    figure = Figure(figsize=(panel[0] * cols, panel[1] * rows + 0.6), dpi=DPI,
                    layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False, sharey=sharey)
    return figure, [list(row) for row in axes]


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
