#!/usr/bin/env python3
"""Turns the JSON reports of one scripts/bench.sh run into BENCHMARKS.md (printed on stdout).

usage: bench-report.py WORK_DIR "1 4 16 64" DURATION_SECONDS
"""
import json
import os
import platform
import subprocess
import sys
from collections import defaultdict

TARGETS = [
    ("quarry-sqlite", "Quarry, SQLite"),
    ("quarry-postgres", "Quarry, PostgreSQL"),
    ("quarry-replicas", "Quarry, SQLite, --replicas 2"),
    ("quarry-replicas-postgres", "Quarry, PostgreSQL, --replicas 2"),
    ("pebble", "Pebble 2.4 (Debian)"),
]
# Test fixtures that `quarry dev` hosts in its supervising process, `quarry-dev` (the challenge DNS server, two fake
# CT logs, and with --replicas the load balancer in front of the wfes): shown, but not counted as the CA's CPU, as
# Pebble's challenge test server is not.
FIXTURES = {"quarry-dev dev"}


def service_of(name):
    """Groups PostgreSQL's backends under one name."""
    return "postgres" if name.startswith("postgres") else name


def load(work, target, clients):
    path = os.path.join(work, f"{target}-{clients}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def split_cpu(report):
    server, fixtures = 0.0, 0.0
    per_service = defaultdict(float)
    for process in report["processes"]:
        if process["name"] in FIXTURES:
            fixtures += process["cpu_ms_per_cert"]
        else:
            server += process["cpu_ms_per_cert"]
            per_service[service_of(process["name"])] += process["cpu_ms_per_cert"]
    return server, fixtures, per_service


def peak_rss(report):
    peaks = defaultdict(int)
    for process in report["processes"]:
        if process["name"] not in FIXTURES:
            name = service_of(process["name"])
            peaks[name] = max(peaks[name], process["peak_rss_kib"])
    return peaks


def fmt(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}"


def grpc_calls(report):
    """gRPC calls per certificate the services counted (Quarry only), or None."""
    calls = report.get("grpc_calls_per_certificate")
    return calls["total"] if calls else None


def wakeup_round_trip_us(rounds, cpus):
    """CPU microseconds per round trip of a one-byte ping-pong between two processes over pipes, the first on
    `cpus[0]` and the second on `cpus[1]`: two wake-ups and two switches."""
    ping_r, ping_w = os.pipe()
    pong_r, pong_w = os.pipe()
    before = os.times()
    children = []
    for role, cpu in zip(("ping", "pong"), cpus):
        pid = os.fork()
        if pid == 0:
            os.sched_setaffinity(0, {cpu})
            for _ in range(rounds):
                if role == "ping":
                    os.write(ping_w, b"x")
                    os.read(pong_r, 1)
                else:
                    os.read(ping_r, 1)
                    os.write(pong_w, b"x")
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    for fd in (ping_r, ping_w, pong_r, pong_w):
        os.close(fd)
    after = os.times()
    spent = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return spent / rounds * 1e6


def main():
    work, clients, duration = sys.argv[1], sys.argv[2].split(), sys.argv[3]
    cpu_model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = []
    w = out.append
    w("# Benchmarks\n")
    w(
        "Written by `scripts/bench.sh` (do not edit by hand): Quarry (`quarry dev`, every service its own process, "
        "release build) on SQLite and on PostgreSQL, and Pebble (Debian's package, `PEBBLE_VA_NOSLEEP=1`, "
        "`PEBBLE_WFE_NONCEREJECT=0`) in one run — Pebble running beside the first Quarry stack, its load at each "
        "client count right after Quarry's, since this machine's speed drifts within minutes — each loaded by "
        "`quarry loadgen` for "
        f"{duration} s per client count: every client has its own account and loops new-order → http-01 (answered "
        "by the load generator) → finalize → download, polling every 20 ms while an authorization or order is "
        "pending or processing.\n"
    )
    w(f"Machine: {os.cpu_count()} cores, {cpu_model}, {platform.system()} {platform.release()}; commit {commit}.\n")
    # What a wake-up costs differs between machines far more than what a computation costs, and Quarry's processes
    # wake each other over a hundred times per certificate where Pebble's goroutines mostly do not wake a thread.
    rounds = 20000
    usable = sorted(os.sched_getaffinity(0))
    one_cpu = wakeup_round_trip_us(rounds, (usable[-1], usable[-1]))
    across = (
        f"{wakeup_round_trip_us(rounds, (usable[0], usable[-1])):.1f} µs of CPU per round trip with each on a CPU of "
        "its own"
        if len(usable) > 1
        else "one CPU only, so no wake-up across CPUs"
    )
    w(
        f"Wake-ups on this machine (two processes passing a byte back and forth over pipes, {rounds} round trips, "
        f"Python): {across}, {one_cpu:.1f} µs with both on one CPU.\n"
    )
    w(
        "*Net of idle* subtracts what the same processes spend per second when idle (measured for 10 s before "
        "each load: timers, and for Quarry the dev stack's CRL updates every 10 s), times the run's length. "
        "*Server CPU* is user + system time of every server process (from `/proc`) over the run, divided by the "
        "certificates issued; for Quarry on PostgreSQL it includes the database's processes (SQLite runs inside the "
        "sa). It leaves out the fixtures `quarry dev` hosts in its own process (challenge DNS server, two fake CT "
        "logs), shown apart, as Pebble's challenge test server is. PostgreSQL runs with `fsync=off` (test "
        "cluster); SQLite in WAL mode with `synchronous=NORMAL`.\n"
    )

    w("## Throughput, latency and CPU per certificate\n")
    w(
        "| CA | clients | certs/s | failed orders | order p50 ms | order p99 ms | server CPU ms/cert | "
        "net of idle | idle CPU ms/s | fixtures CPU ms/cert | largest peak RSS MiB | requests/cert | "
        "gRPC calls/cert | loadgen CPU ms/cert |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for target, label in TARGETS:
        for c in clients:
            report = load(work, target, c)
            if report is None:
                continue
            server, fixtures, _ = split_cpu(report)
            peaks = peak_rss(report)
            largest = max(peaks.items(), key=lambda kv: kv[1]) if peaks else ("-", 0)
            failures = sum(report["failures"].values())
            order = report["steps"]["order"]
            summary[(target, c)] = (report, server)
            idle = report.get("idle_cpu_ms_per_sec")
            net = None
            if idle is not None and report["certificates"]:
                net = max(0.0, server - idle * report["seconds"] / report["certificates"])
            w(
                f"| {label} | {c} | {report['certificates_per_second']:.1f} | {failures} | {order['p50_ms']:.0f} | "
                f"{order['p99_ms']:.0f} | {server:.1f} | {fmt(net)} | {fmt(idle, 0)} | {fixtures:.1f} | "
                f"{largest[1] / 1024:.1f} ({largest[0]}) | "
                f"{report.get('requests_per_certificate', 0):.1f} | {fmt(grpc_calls(report))} | "
                f"{report['loadgen_cpu_ms_per_cert']:.2f} |"
            )
    w("")

    w("## Against the goals\n")
    w(
        "CPU per certificate at most 2 × Pebble's at 1 client and 1.5 × at 4; throughput at 4 clients at least "
        "Pebble's; order p50 at 1 client at most 2 × Pebble's (each in this run).\n"
    )
    w("| clients | Quarry SQLite CPU ms/cert | Pebble CPU ms/cert | CPU ratio | certs/s ratio | order p50 ratio |")
    w("|---:|---:|---:|---:|---:|---:|")
    for c in clients:
        quarry, pebble = summary.get(("quarry-sqlite", c)), summary.get(("pebble", c))
        if quarry and pebble and pebble[1] > 0 and pebble[0]["certificates"] > 0:
            rate = quarry[0]["certificates_per_second"] / max(pebble[0]["certificates_per_second"], 1e-9)
            p50 = quarry[0]["steps"]["order"]["p50_ms"] / max(pebble[0]["steps"]["order"]["p50_ms"], 1e-9)
            w(f"| {c} | {quarry[1]:.1f} | {pebble[1]:.1f} | {quarry[1] / pebble[1]:.2f} | {rate:.2f} | {p50:.2f} |")
        elif quarry:
            w(f"| {c} | {quarry[1]:.1f} | no certificates | – | – | – |")
    w("")
    for target, label in TARGETS[:2]:
        four, many = summary.get((target, "4")), summary.get((target, "64"))
        sixteen = summary.get((target, "16"))
        if four and many:
            w(
                f"- {label}: throughput at 64 clients {many[0]['certificates_per_second']:.1f}/s vs "
                f"{four[0]['certificates_per_second']:.1f}/s at 4 (goal ≥)."
            )
        if sixteen:
            order = sixteen[0]["steps"]["order"]
            w(
                f"- {label}: at 16 clients order p99 {order['p99_ms']:.0f} ms = "
                f"{order['p99_ms'] / max(order['p50_ms'], 1e-9):.2f} × p50 (goal ≤ 2)."
            )
    w("")

    w("## Server CPU per certificate by process (ms)\n")
    w("The three vas (primary and two remote perspectives) are summed under `quarry va`.\n")
    services = sorted(
        {
            name
            for (target, _), (report, _) in summary.items()
            for name in split_cpu(report)[2]
        }
    )
    w("| CA | clients | " + " | ".join(services) + " |")
    w("|---|---:|" + "---:|" * len(services))
    for target, label in TARGETS:
        for c in clients:
            if (target, c) not in summary:
                continue
            per = split_cpu(summary[(target, c)][0])[2]
            w(f"| {label} | {c} | " + " | ".join(f"{per[s]:.2f}" if s in per else "" for s in services) + " |")
    w("")

    counted = [(c, summary[("quarry-sqlite", c)][0]) for c in clients if ("quarry-sqlite", c) in summary]
    counted = [(c, r["grpc_calls_per_certificate"]) for c, r in counted if r.get("grpc_calls_per_certificate")]
    if counted:
        c, calls = counted[-1]
        w(f"## gRPC calls per certificate by RPC (Quarry SQLite, {c} clients; {calls['total']:.1f} in all)\n")
        w("| RPC | calls/cert |")
        w("|---|---:|")
        for rpc, per in sorted(calls["by_rpc"].items(), key=lambda kv: -kv[1]):
            if per >= 0.01:
                w(f"| `{rpc}` | {per:.2f} |")
        w("")

    w("## Latency per step at 16 clients (ms, p50 / p99)\n")
    steps = ["new-order", "validation", "finalize", "download", "order"]
    w("| CA | " + " | ".join(steps) + " |")
    w("|---|" + "---:|" * len(steps))
    for target, label in TARGETS:
        if (target, "16") in summary:
            s = summary[(target, "16")][0]["steps"]
            w(f"| {label} | " + " | ".join(f"{s[k]['p50_ms']:.0f} / {s[k]['p99_ms']:.0f}" for k in steps) + " |")
    w("")

    w("## Idle resident memory after start (MiB, goal ≤ 30 per service)\n")
    idle = defaultdict(list)
    with open(os.path.join(work, "idle.jsonl")) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                idle[row["target"]].append((row["name"], row["rss_kib"]))
    w("| CA | process | RSS MiB |")
    w("|---|---|---:|")
    for target, label in TARGETS:
        for name, rss in sorted(idle.get(target, [])):
            w(f"| {label} | {name} | {rss / 1024:.1f} |")
    w("")

    failures = [
        (target, c, summary[(target, c)][0]["failures"])
        for target, _ in TARGETS
        for c in clients
        if (target, c) in summary and summary[(target, c)][0]["failures"]
    ]
    if failures:
        w("## Failed orders by problem type\n")
        for target, c, kinds in failures:
            w(f"- {target} at {c} clients: " + ", ".join(f"{n} × {k}" for k, n in sorted(kinds.items())))
        w("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
