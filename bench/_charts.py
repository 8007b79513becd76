"""A PNG per benchmark record: sweeps as lines (each series beside its baseline, dashed),
other results as bars of their ratio to the baseline, targets marked."""

from __future__ import annotations

from typing import Any


def draw(record: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in record["results"] if "x" in r]
    single = [r for r in record["results"] if "x" not in r]
    panels = [p for p in (sweep, single) if p]
    height = 1.2 + 0.32 * len(single)
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, sum(4 if p is sweep else height for p in panels)),
        squeeze=False,
    )
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        if panel is sweep:
            draw_sweep(ax, sweep)
        else:
            draw_ratios(ax, single)
    machine = record["machine"]
    fig.suptitle(
        f"{record['benchmark']} ({record['mode']}): {record['date'][:10]}, commit "
        f"{record['commit']}, {machine['cores']} cores",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw_sweep(ax: Any, results: list[dict[str, Any]]) -> None:
    baselines: dict[str, dict[float, float]] = {}
    for series in dict.fromkeys(r["series"] for r in results):
        points = sorted((r["x"], r["value"]) for r in results if r["series"] == series)
        ax.plot(*zip(*points, strict=True), marker="o", label=series)
    for r in results:
        baselines.setdefault(r["baseline"], {})[r["x"]] = r["baseline_value"]
    for name, by_x in baselines.items():
        ax.plot(*zip(*sorted(by_x.items()), strict=True), "k--", marker=".", label=name)
    values = [r["value"] for r in results] + [r["baseline_value"] for r in results]
    if min(values) > 0 and max(values) / min(values) > 50:
        ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_ylabel(results[0]["unit"])
    ax.set_xlabel(results[0].get("x_unit", ""))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def draw_ratios(ax: Any, results: list[dict[str, Any]]) -> None:
    labels = [
        r["name"] if " vs " in r["name"] else f"{r['name']} / {r['baseline']}" for r in results
    ]
    ratios = [r["ratio"] for r in results]
    if min(ratios) > 0 and max(ratios) / min(ratios) > 30:
        ax.set_xscale("log")
    ax.barh(labels, ratios, color=["C0" if r["higher_is_better"] else "C1" for r in results])
    ax.axvline(1, color="k", lw=0.8)
    for i, r in enumerate(results):
        if "target" in r:
            ax.plot([r["target"]], [i], "r|", markersize=14, mew=2)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("ratio to baseline (blue: higher is better; orange: lower; red: target)")
