"""
Charts as inline SVG, drawn on the server: no script, no asset from
elsewhere, so the console and C{knocker report --format html} work offline.
"""

from xml.sax.saxutils import escape

COLOURS = {"opens": "#2a7d2a", "failures": "#b03a2e", "lockouts": "#8e44ad",
           "denials": "#d68910", "hits": "#2e86c1"}


def bar_chart(labels: list[str], series: dict[str, list[int]], title: str,
              width: int = 640, height: int = 220) -> str:
    """
    Grouped bars, one group per label, one bar per series, with a legend;
    C{title} is the chart's accessible name.
    """
    top, bottom, left = 24, 40, 40
    plot_h = height - top - bottom
    peak = max([1] + [v for values in series.values() for v in values])
    groups = max(1, len(labels))
    group_w = (width - left - 8) / groups
    bar_w = max(1.0, group_w * 0.8 / max(1, len(series)))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="100%" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width}" y2="{top + plot_h}" stroke="#888"/>',
        f'<text x="2" y="{top + 4}" font-size="10">{peak}</text>',
        f'<text x="2" y="{top + plot_h}" font-size="10">0</text>',
    ]
    for g, label in enumerate(labels):
        x0 = left + g * group_w
        for s, (name, values) in enumerate(series.items()):
            value = values[g]
            h = plot_h * value / peak
            parts.append(
                f'<rect x="{x0 + s * bar_w:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{COLOURS.get(name, "#555")}">'
                f"<title>{escape(label)} {escape(name)}: {value}</title></rect>")
        if groups <= 12 or g % max(1, groups // 12) == 0:
            parts.append(f'<text x="{x0:.1f}" y="{height - bottom + 14}" font-size="9">'
                         f"{escape(_short(label))}</text>")
    for s, name in enumerate(series):
        x = left + s * 100
        parts.append(f'<rect x="{x}" y="{height - 14}" width="10" height="10" '
                     f'fill="{COLOURS.get(name, "#555")}"/>'
                     f'<text x="{x + 14}" y="{height - 5}" font-size="11">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _short(label: str) -> str:
    """
    "2026-12-01T14" -> "12-01 14h", "2026-12-01" -> "12-01".
    """
    day, _, hour = label.partition("T")
    return day[5:] + (f" {hour}h" if hour else "")


def report_chart(report) -> str:
    """
    The chart of a L{knocker.console.report.Report}: every figure per bucket.
    """
    starts = sorted(report.rows)
    series = {name: [getattr(report.rows[s], name) for s in starts]
              for name in ("opens", "failures", "lockouts", "denials", "hits")}
    return bar_chart(starts, series, f"events per {report.bucket}")
