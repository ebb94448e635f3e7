"""The few charts the chapters share: Korean labels, PNG output, fixed sizes.

matplotlib's default fonts have no Hangul glyphs (boxes on the chart and a warning on stderr), so
the NanumGothic font that the koreanize-matplotlib wheel ships is registered once, on import.
Its package is not imported: its import code uses distutils, gone from Python 3.12.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib import font_manager

FONT_FAMILY = "NanumGothic"


def use_korean_font() -> str:
    """Register the bundled NanumGothic fonts and make them the default; returns the family."""
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("koreanize-matplotlib is not installed; it ships the Korean font the charts use")
    fonts = Path(next(iter(spec.submodule_search_locations)), "fonts")
    known = {f.fname for f in font_manager.fontManager.ttflist}
    for path in sorted(fonts.glob("*.ttf")):
        if str(path) not in known:
            font_manager.fontManager.addfont(str(path))
    # DejaVu Sans (matplotlib's own) backs up the few glyphs NanumGothic lacks, such as µ.
    plt.rcParams["font.family"] = [FONT_FAMILY, "DejaVu Sans"]
    plt.rcParams["axes.unicode_minus"] = False  # NanumGothic has no U+2212 minus sign
    return FONT_FAMILY


use_korean_font()


def bars(values: Mapping[str, float], *, title: str, ylabel: str, fmt: str = "{:,.0f}",
         figsize: tuple[float, float] = (6.0, 3.2)) -> None:
    """One bar per label, each annotated with its value."""
    fig, ax = plt.subplots(figsize=figsize)
    labels, heights = list(values), list(values.values())
    rects = ax.bar(labels, heights, color=plt.cm.tab10.colors[: len(labels)])
    ax.bar_label(rects, labels=[fmt.format(h) for h in heights], padding=2)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.margins(y=0.15)
    fig.tight_layout()
    plt.show()


def lines(df: pd.DataFrame, *, x: str, y: str, hue: str, title: str, xlabel: str, ylabel: str,
          logx: bool = False, logy: bool = False, stat: str = "median",
          figsize: tuple[float, float] = (6.0, 3.6)) -> None:
    """``stat`` (median or min) of ``y`` against ``x``, one line per ``hue`` value, min–max band around it.

    ``stat="min"`` plots the fastest run: the cost of the work itself, with the noise (scheduling,
    other processes) that only ever adds time left in the band.
    """
    if stat not in ("median", "min"):
        raise ValueError(f"stat must be 'median' or 'min', not {stat!r}")
    fig, ax = plt.subplots(figsize=figsize)
    for name, group in df.groupby(hue, sort=False):
        stats = group.groupby(x)[y].agg(["median", "min", "max"])
        ax.plot(stats.index, stats[stat], marker="o", label=str(name))
        ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2)
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plt.show()


def timeline(tl: pd.DataFrame, *, title: str, figsize: tuple[float, float] = (7.0, 3.0)) -> None:
    """A latency probe's timeline: each ping's latency at the moment it was sent."""
    fig, ax = plt.subplots(figsize=figsize)
    ax.plot(tl["t_ms"], tl["latency_ms"], marker=".", linewidth=0.8)
    ax.set_title(title)
    ax.set_xlabel("경과 시간 (ms)")
    ax.set_ylabel("PING 지연 (ms)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    plt.show()
