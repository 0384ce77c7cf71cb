#!/usr/bin/env python3
"""
Write docs/benchmarks.md (and its plot) from the JSON in bench/results/.

Only what one `bench/run` measured goes in: every figure is read from the
result files, with the machine and commit they came from, so the page is
regenerated rather than edited by hand.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

RESULTS = os.path.join(HERE, "results")
# BENCH_DOCS_DIR writes the page elsewhere (a trial run that must not touch
# the committed docs/benchmarks.md)
DOCS = os.environ.get("BENCH_DOCS_DIR") or os.path.join(os.path.dirname(HERE), "docs")
PLOT = "benchmarks-time-to-open.png"


def load(name):
    path = os.path.join(RESULTS, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def ms(value):
    return "—" if value is None else f"{value:.1f}"


def verdict(ok):
    return "met" if ok else "**not met**"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


ORDER = ("spawn-true", "python-pass", "python-reactor", "knocker-import", "knockd", "fwknop-pcap",
         "fwknop-udp", "knocker", "knocker-config", "knocker-first", "knocker-pool10k")


def open_table(entries, out):
    order = [name for name in ORDER if name in entries]
    rows = []
    for name in order:
        e = entries[name]
        ratio = e.get("p50_vs_knockd")
        rows.append([f"`{name}`", e["n"], e["failures"], ms(e.get("p50_ms")), ms(e.get("p95_ms")),
                     ms(e.get("min_ms")), ms(e.get("max_ms")), ms(e.get("client_exit_p50_ms")),
                     ms(e.get("client_exit_p95_ms")), "—" if ratio is None else f"{ratio:.2f}x"])
    out.append(table(["entry", "runs", "failed", "p50 ms", "p95 ms", "min", "max",
                      "exit p50", "exit p95", "p50 / knockd"], rows))
    return order


def config_targets(peers, out):
    t = peers.get("targets") or {}
    if "open_vs_knockd" not in t or "exit_minus_floor_ms" not in t:
        return
    out.append("")
    out.append(
        f"`knocker knock --config` (`knocker-config`), p50s: time to open "
        f"{t['open_vs_knockd']:.2f}x knockd's (target ≤ {t['vs_knockd_max']}x: "
        f"{verdict(t['open_vs_knockd_met'])}); client spawn to exit "
        f"{t['exit_minus_floor_ms']:+.1f} ms over `python -c pass` "
        f"({t['floor_p50_ms']:.1f} ms; target ≤ +{t['over_floor_max_ms']:.0f} ms: "
        f"{verdict(t['exit_minus_floor_met'])}).")


def time_to_open(peers, out):
    entries = peers["entries"]
    order = open_table(entries, out)
    knocker, knockd = entries.get("knocker"), entries.get("knockd")
    pcap = entries.get("fwknop-pcap")
    if knocker and knockd and pcap:
        out.append("")
        out.append(
            f"Targets: ahead of knockd and of stock fwknop "
            f"({verdict(knocker['p50_ms'] < knockd['p50_ms'] and knocker['p50_ms'] < pcap['p50_ms'])}:"
            f" {knocker['p50_ms'] / knockd['p50_ms']:.2f}x knockd, "
            f"{knocker['p50_ms'] / pcap['p50_ms']:.2f}x stock fwknop); "
            f"p50 ≤ 15 ms ({verdict(knocker['p50_ms'] <= 15)}: {knocker['p50_ms']:.1f} ms)."
        )
    config_targets(peers, out)
    stalls_line(peers, out)
    plot_time_to_open(entries, [n for n in order if n not in ("python-reactor",)])
    out.append("")
    out.append(f"![time to open, each run]({PLOT})")


def plot_time_to_open(entries, order):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib missing, no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=110)
    data = [entries[name]["samples_ms"] for name in order]
    ax.boxplot(data, orientation="horizontal", tick_labels=order, showfliers=False, widths=0.5)
    for row, samples in enumerate(data, start=1):
        ax.scatter(samples, [row] * len(samples), s=8, alpha=0.5, color="tab:blue")
    ax.axvline(15, color="tab:red", linestyle="--", linewidth=1)
    ax.text(15.5, 0.6, "15 ms target", color="tab:red", fontsize=8)
    ax.set_xlabel("ms from client process start to the success action running")
    ax.set_xscale("log")
    ax.set_title("Time to open, loopback, interleaved runs")
    fig.tight_layout()
    fig.savefig(os.path.join(DOCS, PLOT))


def flood(peers, out):
    rows = []
    for peer, modes in sorted(peers.get("flood", {}).get("peers", {}).items()):
        for mode in ("quiet", "flood-other-src", "flood-same-src"):
            if mode in modes:
                m = modes[mode]
                rows.append([peer, mode, m["opened"], ms(m.get("p50_ms")), ms(m.get("p95_ms")),
                             m.get("flood_rate_p50", "—")])
    if rows:
        out.append(table(["daemon", "mode", "opened", "p50 ms", "p95 ms", "flood conn/s (p50)"],
                         rows))


def floor(report, out, title):
    rows = []
    for row in report["summary"]:
        rows.append([row["name"], row["rate"], row["done_per_s"], row["cpu_us_per_hit"],
                     row.get("cpu_vs_floor", "1.0x"), row["lost_p50"], row["timeouts"]])
    out.append(f"{title}\n")
    out.append(table(["target", "flood rate asked", "completed/s", "CPU µs per hit",
                      "vs C floor", "hits missing from audit", "connect timeouts"], rows))


def veth(report, out):
    net = report.get("network", {})
    out += ["", "## Over a veth pair", "",
            "The same entries with the daemons in one network namespace and the clients "
            f"in another, joined by a veth pair (server {net.get('server_ip', '10.77.0.1')}, "
            f"client {net.get('client_ip', '10.77.0.2')}); knockd and fwknopd sniff the "
            "server's end of the pair.  Clients are spawned straight into their namespace "
            "(setns, no `ip netns exec`); `python-pass` runs there too.", ""]
    open_table(report["entries"], out)
    config_targets(report, out)
    stalls_line(report, out)


def stalls_line(report, out):
    """How much the machine stalled during the run, when the run recorded it."""
    stalls = report.get("machine", {}).get("stalls_pct")
    if stalls:
        out += ["", "The machine during the timed rounds (`/proc/pressure`, share of their "
                f"wall time): {common.stalls_text(stalls)}.  Figures from a run with much waiting "
                "are slower across the board; compare entries within the run."]


def door(report, out):
    entries = report["entries"]
    order = [n for n in ("knocker-config", "knockd", "fwknop-udp", "fwknop-pcap",
                         "knocker-config-nft") if n in entries]
    rows = [[f"`{n}`", entries[n]["n"], entries[n]["failures"], ms(entries[n].get("p50_ms")),
             ms(entries[n].get("p95_ms")), ms(entries[n].get("max_ms")),
             ms(entries[n].get("client_exit_p50_ms")), ms(entries[n].get("connect_p50_ms")),
             entries[n]["first_failed"], entries[n]["syns_dropped"]] for n in order]
    out += ["", "## Knock, then connect", "",
            f"Over the veth pair, a real nftables door in the server namespace "
            f"(`etc/scripts/nft-setup`, protected port {report.get('port', 2222)}) in front of "
            "a TCP service: from the client command's start to a TCP connection made to the "
            "protected port, the connect starting as soon as the client exits 0 (`knock && "
            "ssh`).  Each daemon's success action adds the client's address to the allowed "
            "set: knocker `etc/scripts/nft-open`, knockd `nft add element`, fwknop "
            "`CMD_CYCLE_OPEN` running the same command (fwknopd has no nftables support).  "
            "A first connect fails when it needed a resent SYN (Linux resends after 1 s), "
            "or the drop rule counted one of its SYNs.", "",
            table(["entry", "runs", "failed", "p50 ms", "p95 ms", "max", "client exit p50",
                   "connect p50", "first connect failed", "SYNs dropped"], rows)]
    if "knocker-config-nft" in entries:
        out += ["", "`knocker-config-nft` is a contrast, not what users run: knocker with "
                "`on-success` a two-line `sh` script running knockd's `nft add element` "
                "command instead of `etc/scripts/nft-open`."]
    t = report.get("target")
    k = entries.get("knocker-config")
    if t and k:
        out += ["", f"Target for knocker: p95 < {t['p95_ms_max']:.0f} ms and no failed first "
                f"connect ({verdict(t['met'])}: p95 {k['p95_ms']:.1f} ms, "
                f"{k['first_failed']} failed)."]


def ssh_door(report, out):
    entries = report["entries"]
    order = [n for n in ("ssh-open", "knocker-connect", "knocker-knock-ssh", "knockd-ssh")
             if n in entries]
    base = entries.get("ssh-open", {}).get("p50_ms")

    def added(name):
        p50 = entries[name].get("p50_ms")
        return "" if base is None or p50 is None or name == "ssh-open" else f"{p50 - base:+.1f}"

    rows = [[f"`{n}`", entries[n]["n"], entries[n]["failures"], ms(entries[n].get("p50_ms")),
             ms(entries[n].get("p95_ms")), ms(entries[n].get("max_ms")), added(n),
             entries[n]["first_failed"]] for n in order]
    out += ["", "## `ssh door true` through the door", "",
            f"The same door with a real `sshd` on port {report.get('port', 2222)}: from the "
            "first command's start to `ssh door true` exiting 0 in the client namespace.  "
            "`ssh-open`: the door opened beforehand, no knock (ssh and sshd alone); "
            "`knocker-connect`: `ssh` with `ProxyCommand knocker connect --config FILE %h %p`; "
            "`knocker-knock-ssh`: `knocker knock --config FILE && ssh door true`; "
            "`knockd-ssh`: `knock IP p1..p6 && ssh door true`.  A first connect fails when "
            "the door's drop rule counted a SYN of the run (ssh then waits for the one Linux "
            "resends a second later).", "",
            table(["entry", "runs", "failed", "p50 ms", "p95 ms", "max", "over ssh-open p50",
                   "first connect failed"], rows)]


def phases(report, out):
    order = ("interpreter start", "imports", "args", "config read", "file check", "hello",
             "handshake import", "challenge + proof", "driver imports", "grant wait",
             "file check (whole, in grant wait)", "hits",
             "verdict", "log write",
             "remember checked", "print + return", "interpreter exit", "between phases", "total")
    got = report["phases_ms"]
    rows = [[name, f"{got[name]['p50']:.2f}", f"{got[name]['p95']:.2f}"]
            for name in order if name in got]
    out += ["", "## Where the time of `knocker knock --config` goes", "",
            "Instrumented runs (`bench/knock_phases.py`: the real entry point, with "
            "timers wrapped around the functions it calls) against a daemon on loopback; "
            "`interpreter start` is spawn to the first line of Python.", "",
            table(["phase", "p50 ms", "p95 ms"], rows), "",
            f"Uninstrumented: `knocker knock --config` p50 {report['plain_knock_ms']['p50']:.1f} "
            f"ms, `python -c pass` p50 {report['floor_ms']['p50']:.1f} ms (start "
            f"{report['floor_split_ms_p50']['interpreter start']:.1f}, exit "
            f"{report['floor_split_ms_p50']['interpreter exit']:.1f})."]


def main():
    os.makedirs(DOCS, exist_ok=True)
    peers, floor_default, floor_1024 = load("peers"), load("floor"), load("floor-nofile1024")
    inprocess, scale, clients, durability = (load(n) for n in
                                             ("inprocess", "scale", "clients", "durability"))
    machine = (peers or inprocess or {}).get("machine", {})
    out = ["# Benchmarks", "",
           "Generated by `bench/report.py` from one `bench/run` (see bench/README.md);",
           "do not edit by hand.  Loopback unless a section says otherwise, on this "
           "project's machine:",
           f"{machine.get('cores', '?')} cores, kernel {machine.get('kernel', '?')}, "
           f"Python {machine.get('python', '?')}, commit "
           f"`{machine.get('repo', {}).get('head', '?')}`.  The machine is shared and noisy: "
           "medians and ratios within one run are what to read.", ""]

    if peers:
        out += ["## Time to open", "",
                "From just before the client process is spawned to the moment the "
                "daemon's success action (a C program stamping CLOCK_MONOTONIC) starts. "
                "Runs interleave all entries in a fresh random order with random "
                "pauses.  Baselines (`spawn-true`, `python-pass`, `python-reactor`) are "
                "time to exit.", ""]
        time_to_open(peers, out)
        out += ["", "## Knocking under a connect flood", "",
                "A separate C process floods at the target rate from 127.0.0.2-254 while a "
                "legitimate client knocks from 127.0.0.1 (knocker with `lockout-scope = "
                "source`).  knockd is flooded on a port block holding its sequence; "
                "`flood-same-src` floods knockd from the client's own address.", ""]
        flood(peers, out)
        out.append("")
        knocker_flood = peers.get("flood", {}).get("peers", {}).get("knocker", {})
        under = knocker_flood.get("flood-other-src")
        if under:
            out.append(f"Target: every legitimate knock opens, p95 < 100 ms.  Measured: "
                       f"{under['opened']} opened, p95 {under['p95_ms']:.1f} ms "
                       f"({verdict(under['failures'] == 0 and under['p95_ms'] < 100)}).")
    if floor_default:
        out += ["", "## Hit throughput and CPU per hit", "",
                "The same flood against a minimal C epoll accept-and-close loop on 100 "
                "ports and against knocker's 100 pool ports; CPU from getrusage and "
                "/proc; every completed connection must be accounted for in the audit "
                "log (a `hit` line, or the count of a `hits` summary once past "
                "`audit-hit-rate` lines a second, the default configuration).", ""]
        floor(floor_default, out, "Default descriptor limit:")
        if floor_1024:
            out.append("")
            floor(floor_1024, out, "Daemon's soft descriptor limit at 1024:")
        rows = [r for r in floor_default["summary"] if r["name"] == "knocker"]
        best = max((r["done_per_s"] for r in rows), default=0)
        ratio = max((float(str(r.get("cpu_vs_floor", "0")).rstrip("x")) for r in rows), default=0)
        out += ["", f"Targets: ≥ 25,000 hits/s with every hit logged, CPU per hit within 2x of "
                f"the C floor.  Measured: {best:,} hits/s "
                f"({verdict(best >= 25000 and all(r['lost_p50'] == 0 for r in rows))}), "
                f"worst ratio {ratio:.1f}x ({verdict(ratio <= 2)})."]
    if inprocess:
        k = inprocess["knock"]
        out += ["", "## In-process knock", "",
                "One reactor: the real service (real SQLite commit, real audit log) and "
                "the Twisted client over loopback; the success action replaced by one that "
                "returns at once.", "",
                table(["knocks", "p50 ms", "p95 ms", "min ms"],
                      [[k["n"], f"{k['p50_ms']:.2f}", f"{k['p95_ms']:.2f}", f"{k['min_ms']:.2f}"]]),
                "", "Phases (p50 ms): " + ", ".join(
                    f"{name} {value:.2f}" for name, value in inprocess["phases_p50_ms"].items()),
                "", f"Target p50 ≤ 2 ms: {verdict(k['p50_ms'] <= 2)}."]
    if scale:
        rows = [[s["kind"], s["pool_size"], ms(s["ready_ms_p50"]), ms(s["rss_mb_p50"]),
                 s.get("ready_vs_bare", "—"), s.get("rss_vs_bare", "—")] for s in scale["summary"]]
        t = scale["targets"]
        out += ["", "## Pool scale", "",
                "Daemon start to its `start` audit event (everything bound), and RSS then; "
                "a bare Twisted reactor holding as many listeners for comparison; "
                "medians of repeated starts.", "",
                table(["process", "ports", "ready ms", "RSS MB", "ready vs bare", "RSS vs bare"],
                      rows),
                "", f"Target at {t['pool_size']:,} ports: ready < {t['ready_ms']:.0f} ms "
                f"({verdict(t['ready_ok'])}), RSS < {t['rss_mb']:.0f} MB ({verdict(t['rss_ok'])})."]
    if clients:
        rows = [[s["config"], ms(s["ready_ms_p50"]), ms(s["rss_ready_mb_p50"]),
                 ms(s["rss_after_mb_p50"]), f"{s['grant_p50_ms']:.2f}", f"{s['grant_p95_ms']:.2f}"]
                for s in clients["summary"]]
        t = clients["targets"]
        out += ["", "## Many clients", "",
                f"{clients['params']['clients']:,} registered clients with "
                f"{clients['params']['knocks']:,} knocks each against one; grant latency "
                "is HELLO to GRANT over loopback, a random client each time.", "",
                table(["state", "ready ms", "RSS at ready MB", "RSS after grants MB",
                       "grant p50 ms", "grant p95 ms"], rows),
                "", f"Targets: ready < {t['ready_ms']:.0f} ms ({verdict(t['ready_ok'])}), "
                f"RSS < {t['rss_mb']:.0f} MB ({verdict(t['rss_ok'])}), grant latency within "
                f"{t['grant_ratio_max']}x of one client "
                f"({clients['ratios_many_vs_one']['grant_p50_ms']}x: {verdict(t['grant_similar'])})."]
    if durability:
        rows = [[r["what"], r["us_p50"], r["per_s_p50"]] for r in durability["raw"]]
        ex = [[e["state"], e["threads"], e["grants_per_s_p50"], f"{e['latency_p50_ms']:.2f}"]
              for e in durability["exchanges"]]
        c = durability["cost"]
        out += ["", "## Durability cost", "",
                "Every grant commits the burned number (SQLite WAL, `synchronous=FULL`, "
                "so an fsync) before the GRANT line is written.", "",
                table(["operation", "µs p50", "per second"], rows), "",
                table(["state on", "clients at once", "HELLO→GRANT per s", "latency p50 ms"], ex),
                "", f"The fsync is about {c['fsync_us_per_burn']:.0f} µs of each burn here; "
                f"over whole exchanges durable state gives "
                f"{c['grants_per_s_disk_vs_tmpfs_1']:.2f}x the grants per second of tmpfs "
                f"with one client and {c['grants_per_s_disk_vs_tmpfs_4']:.2f}x with four. "
                "Grants are rare (one per knock), so knocker keeps the fsync."]
    peers_veth, door_report, ssh_report, phase_report = (
        load(n) for n in ("peers-veth", "door", "ssh_door", "knock_phases"))
    if peers_veth:
        veth(peers_veth, out)
    if door_report:
        door(door_report, out)
    if ssh_report:
        ssh_door(ssh_report, out)
    if phase_report:
        phases(phase_report, out)
    out.append("")
    with open(os.path.join(DOCS, "benchmarks.md"), "w") as handle:
        handle.write("\n".join(out))
    print("wrote", os.path.join(DOCS, "benchmarks.md"))


if __name__ == "__main__":
    main()
