"""
The benchmark's output: rows with ratios and targets, a text or Markdown table, JSON, plots.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

MARK = "<!-- bench:{} -->"
END_MARK = "<!-- /bench:{} -->"


@dataclass
class Row:
    """One figure: relayd's value, the baseline's, their ratio and the target for it.

    ``cpu_ratio`` is the same comparison, in the same direction, made with
    server CPU time per operation instead of wall time (for a rate: the
    baseline's cost over relayd's, what each would reach on a core of its
    own whatever the neighbours did; for idle CPU: relayd's cost per ping
    over the baseline's).

    ``target`` is ``(op, value)`` with ``op`` one of ``>=``, ``<=`` on the
    ratio, or ``(op, value, "abs")`` on relayd's own value.
    """

    key: str
    figure: str
    unit: str
    relayd: float | None
    baseline: float | None = None
    baseline_name: str = "aiohttp"
    target: tuple | None = None
    note: str = ""
    cpu_ratio: float | None = None
    ratio: float | None = field(default=None)
    ok: bool | None = field(default=None)

    def __post_init__(self):
        if self.ratio is None and self.relayd is not None and self.baseline:
            self.ratio = self.relayd / self.baseline
        self.ok = self._judge()

    def _judge(self) -> bool | None:
        if self.target is None:
            return None
        op, goal = self.target[0], self.target[1]
        value = self.relayd if len(self.target) > 2 else self.ratio
        if value is None:
            return None
        return value >= goal if op == ">=" else value <= goal

    def target_text(self) -> str:
        """``≥ 1.5×``, ``≤ 50 ms``, or empty."""
        if self.target is None:
            return ""
        sign = "≥" if self.target[0] == ">=" else "≤"
        if len(self.target) > 2:
            return f"{sign} {fmt(self.target[1], self.unit)} {self.unit}".rstrip()
        return f"{sign} {self.target[1]:g}×"


def skipped(key: str, figure: str, unit: str, why: str) -> Row:
    """A row that could not be measured, saying why."""
    return Row(key, figure, unit, None, note=f"skipped: {why}")


def fmt(value: float | None, unit: str) -> str:
    """A value in the precision its unit deserves."""
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, int):
        return f"{value:,}"
    if unit in ("/s", "") and abs(value) >= 100:
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def percentile(ordered: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of an already sorted list (nearest rank)."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def latency_summary(latencies_us: list[int]) -> dict:
    """p50/p99/p999/max in milliseconds, and the sample count."""
    ordered = sorted(latencies_us)
    out = {"samples": len(ordered)}
    for name, q in (("p50", 0.50), ("p99", 0.99), ("p999", 0.999), ("max", 1.0)):
        value = percentile(ordered, q)
        out[name] = None if value is None else value / 1000.0
    return out


def median(values: list[float]) -> float | None:
    """The median, or None for no values."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _cells(row: Row) -> list[str]:
    mark = {True: "✓", False: "✗", None: ""}[row.ok]
    unit = f" {row.unit}" if row.unit and row.unit != "/s" else ("/s" if row.unit == "/s" else "")
    relayd = fmt(row.relayd, row.unit) + (unit if row.relayd is not None else "")
    baseline = "" if row.baseline is None else f"{fmt(row.baseline, row.unit)}{unit}"
    if row.baseline is not None and row.baseline_name != "aiohttp":
        baseline += f" ({row.baseline_name})"
    ratio = "" if row.ratio is None else f"{row.ratio:.2f}×"
    by_cpu = "" if row.cpu_ratio is None else f"{row.cpu_ratio:.2f}×"
    figure = row.figure + (f" — {row.note}" if row.note else "")
    return [figure, relayd, baseline, ratio, row.target_text(), mark, by_cpu]


HEADERS = ["figure", "relayd", "aiohttp (or baseline)", "ratio", "target", "", "by CPU time"]


def text_table(rows: list[Row]) -> str:
    """The rows as an aligned plain-text table."""
    cells = [HEADERS] + [_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    lines = []
    for n, line in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(["---"] + ["---:"] * 4 + [":-:", "---:"]) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |")
    return "\n".join(lines)


def update_doc(path: Path, sections: dict[str, str]) -> list[str]:
    """Replace the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` for each section; those replaced."""
    text = path.read_text()
    done = []
    for name, body in sections.items():
        start, end = MARK.format(name), END_MARK.format(name)
        if start in text and end in text:
            before, rest = text.split(start, 1)
            text = f"{before}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"
            done.append(name)
    path.write_text(text)
    return done


def memory_table(memory: dict) -> str:
    """How memory grows with connections held: RSS, per connection, and the marginal cost between steps."""
    lines = ["| held | relayd RSS | relayd per connection | relayd marginal | aiohttp RSS | aiohttp per connection "
             "| aiohttp marginal |", "|---:|---:|---:|---:|---:|---:|---:|"]
    steps = list(zip(memory.get("relayd", []), memory.get("aiohttp", []), strict=False))
    previous = None
    for relayd, aiohttp in steps:
        cells = [f"{relayd['held']:,}"]
        for n, point in enumerate((relayd, aiohttp)):
            before = previous[n] if previous else {"held": point.get("warm", 0), "rss_kb": point["base_kb"]}
            marginal = (point["rss_kb"] - before["rss_kb"]) / max(point["held"] - before["held"], 1)
            cells += [f"{point['rss_kb'] / 1024:.1f} MiB", f"{point['kib_per_connection']:.1f} KiB", f"{marginal:.1f} KiB"]
        lines.append("| " + " | ".join(cells) + " |")
        previous = (relayd, aiohttp)
    return "\n".join(lines)


def soak_table(soak: dict) -> str:
    """The soak's samples as a Markdown table."""
    lines = ["| t (s) | RSS | open files | ids connected | connections so far | cut by reset | POSTs acked |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for sample in soak["series"]:
        lines.append(f"| {sample['t']:.0f} | {sample['rss_kb'] / 1024:.1f} MiB | {sample['open_files']} | "
                     f"{sample['connections']} | {sample['opened']:,} | {sample['cut']:,} | {sample['acked']:,} |")
    return "\n".join(lines)


def write_json(path: Path, meta: dict, rows: list[Row], results: dict, warnings: list[str]) -> None:
    """Everything measured, as JSON."""
    document = {"meta": meta, "rows": [asdict(row) for row in rows], "results": results, "warnings": warnings}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(path: Path, rates: dict) -> str:
    """p50/p99 POST→frame latency against offered load, one line per server and quantile; a note."""
    plt = _pyplot()
    if plt is None:
        return "no plot: matplotlib is not installed (pip install '.[bench]')"
    figure, axes = plt.subplots(figsize=(8, 5))
    styles = {"relayd": "tab:blue", "aiohttp": "tab:orange"}
    for server, points in rates.items():
        points = [p for p in points if p.get("p50") is not None]
        if not points:
            continue
        offered = [p["rate"] for p in points]
        for quantile, dash in (("p50", "-"), ("p99", "--")):
            axes.plot(offered, [p[quantile] for p in points], dash, marker="o",
                      color=styles.get(server), label=f"{server} {quantile}")
    axes.set_xlabel("offered load, POSTs/s (one message each)")
    axes.set_ylabel("POST→frame latency, ms")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    axes.set_title("POST→frame latency against offered load (server on CPU 0, load on CPU 1)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"plot written to {path}"


def plot_soak(path: Path, series: list[dict]) -> str:
    """RSS and open files of the relay over the soak; a note."""
    plt = _pyplot()
    if plt is None:
        return "no soak plot: matplotlib is not installed (pip install '.[bench]')"
    if not series:
        return "no soak plot: no samples"
    figure, axes = plt.subplots(figsize=(8, 5))
    seconds = [s["t"] for s in series]
    axes.plot(seconds, [s["rss_kb"] / 1024 for s in series], color="tab:blue", marker=".", label="RSS MiB")
    axes.set_xlabel("seconds")
    axes.set_ylabel("relay RSS, MiB", color="tab:blue")
    files = axes.twinx()
    files.plot(seconds, [s["open_files"] for s in series], color="tab:red", marker=".", label="open files")
    files.plot(seconds, [s["connections"] for s in series], color="tab:green", alpha=0.6, label="connected ids")
    files.set_ylabel("open files / connected ids", color="tab:red")
    files.legend(loc="upper right")
    axes.set_title("soak: churn with traffic")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"soak plot written to {path}"
