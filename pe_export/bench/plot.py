"""PNGs: throughput against batch size, one line per backend and precision; the damage of each
quantized site of a sensitivity report."""

from __future__ import annotations

from pathlib import Path

from pe_export.errors import require_extra
from pe_export.precision.sensitivity import MODES, SensitivityReport
from pe_export.report import Report


def require_plotting() -> None:
    require_extra("plot", "--plot", "matplotlib")


def plot_throughput(report: Report, path: Path) -> None:
    require_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[int, float]]] = {}
    for row in report.results:
        lines.setdefault(f"{row.backend} {row.precision}", []).append((row.batch, row.throughput_ips))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, points in sorted(lines.items()):
        points.sort()
        ax.plot([b for b, _ in points], [t for _, t in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    batches = sorted({row.batch for row in report.results})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title(f"{report.variant} on {report.device}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_sensitivity(report: SensitivityReport, path: Path, top: int = 30) -> None:
    """A bar chart of the damage (1 - token cosine mean) of the most damaging sites, log scale."""
    require_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = report.sites[:top][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(shown) + 1.5), dpi=110)
    ax.barh([s.site for s in shown], [max(1 - s.cosine_mean, 1e-9) for s in shown])
    ax.set_xscale("log")
    ax.set_xlabel(f"1 - token cosine mean, each site {MODES[report.mode]}")
    ax.set_title(f"{report.variant} {report.precision} sensitivity ({report.images} images)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
