"""
A L{knocker.console.report.Report} as text, CSV, JSON or one self-contained
HTML page (its chart inline), for C{knocker report} and the reports page.
"""

import csv
import io
import json
from xml.sax.saxutils import escape

from knocker.console.report import FIGURES, TOP_KEPT
from knocker.console.svg import report_chart

CSV_FIELDS = ("start", *FIGURES, "failures_by_reason")


def as_csv(report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for row in report.as_dict()["rows"]:
        reasons = " ".join(f"{k}={v}" for k, v in sorted(row["failures_by_reason"].items()))
        writer.writerow([row["start"], *(row[name] for name in FIGURES), reasons])
    return out.getvalue()


def as_json(report) -> str:
    return json.dumps(report.as_dict(), indent=2) + "\n"


def short_note(short_by: int) -> str:
    """
    What to say of top counts that come from a bounded summary (see
    L{knocker.console.report.TopCounts}): nothing while they are exact.
    """
    if not short_by:
        return ""
    return (f" (more than {2 * TOP_KEPT:,} of them, counted in bounded memory: "
            f"each count may be short by up to {short_by})")


def as_text(report) -> str:
    data = report.as_dict()
    totals = data["totals"]
    lines = [f"audit log from {data['first'] or '-'} to {data['last'] or '-'}: "
             f"{data['events']} events, per {data['bucket']}",
             *(f"not counted (the figures may be short): {problem}"
               for problem in data["problems"]),
             f"{'start':<14} {'opens':>7} {'failures':>9} {'lockouts':>9} {'denials':>8} "
             f"{'hits':>9}"]
    for row in data["rows"]:
        lines.append(f"{row['start']:<14} {row['opens']:>7} {row['failures']:>9} "
                     f"{row['lockouts']:>9} {row['denials']:>8} {row['hits']:>9}")
    lines.append(f"{'total':<14} {totals['opens']:>7} {totals['failures']:>9} "
                 f"{totals['lockouts']:>9} {totals['denials']:>8} {totals['hits']:>9}")
    if totals["failures_by_reason"]:
        lines.append("failures by reason: " + ", ".join(
            f"{k} {v}" for k, v in sorted(totals["failures_by_reason"].items())))
    lines.append("top sources: " + (", ".join(
        f"{s['source']} ({s['events']})" for s in data["top_sources"]) or "none")
        + short_note(data["top_sources_short_by"]))
    lines.append("top clients: " + (", ".join(
        f"{c['client']} ({c['events']})" for c in data["top_clients"]) or "none")
        + short_note(data["top_clients_short_by"]))
    for row in data["knocks_left"]:
        eta = row["runs_out_in_seconds"]
        lines.append(f"  {row['client']:<24} {row['left']:>7} of {row['knocks']} knocks left; "
                     + ("no knock in this report" if eta is None else
                        f"runs out in about {eta / 86400:.1f} days at this rate"))
    return "\n".join(lines) + "\n"


def table_html(report) -> str:
    """
    The report's tables (per bucket, top sources, top clients) as HTML.
    """
    data = report.as_dict()
    head = "".join(f'<th scope="col">{escape(name)}</th>' for name in CSV_FIELDS)
    rows = []
    for row in data["rows"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(row["failures_by_reason"].items()))
        rows.append("<tr><td>" + escape(row["start"]) + "</td>" + "".join(
            f"<td>{row[name]}</td>" for name in FIGURES) + f"<td>{escape(reasons)}</td></tr>")
    sources = "".join(f"<li>{escape(str(s['source']))}: {s['events']}</li>"
                      for s in data["top_sources"]) or "<li>none</li>"
    clients = "".join(f"<li>{escape(str(c['client']))}: {c['events']}</li>"
                      for c in data["top_clients"]) or "<li>none</li>"
    problems = "".join(f"<li>{escape(problem)}</li>" for problem in data["problems"])
    if problems:
        problems = f"<p>Not counted (the figures may be short):</p><ul>{problems}</ul>"
    return (f'{problems}<div class="scroll"><table>'
            f"<thead><tr>{head}</tr></thead><tbody>"
            f"{''.join(rows)}"
            f"</tbody></table></div><h2>Top sources</h2><ol>{sources}</ol>"
            f"{short_html(data['top_sources_short_by'])}"
            f"<h2>Top clients</h2><ol>{clients}</ol>"
            f"{short_html(data['top_clients_short_by'])}")


def short_html(short_by: int) -> str:
    note = short_note(short_by).strip(" ()")
    return f"<p>{escape(note[0].upper() + note[1:])}.</p>" if note else ""


def as_html(report) -> str:
    data = report.as_dict()
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        "<title>knocker report</title><style>body{font-family:sans-serif;max-width:60em;"
        "margin:auto;padding:0 1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 6px;text-align:right}.scroll{overflow-x:auto}</style></head><body>"
        f"<h1>knocker report</h1><p>The audit log from {escape(data['first'] or '-')} to "
        f"{escape(data['last'] or '-')}: {data['events']} events, per {data['bucket']}.</p>"
        f"{report_chart(report)}{table_html(report)}</body></html>\n"
    )


FORMATS = {"text": as_text, "csv": as_csv, "json": as_json, "html": as_html}
