"""`python -m bench`: every phase in one run on loopback, then bench/results.json, bench/RESULTS.md, README.

Phases (see bench/RESULTS.md): a ceiling, b webhooks, c submissions, d SSE memory/latency/broadcast/stalls,
e SSE churn, f reconnect storm, g cross-replica latency on PostgreSQL, h caller webhook latency, h2 the same with
black-holed receivers, h3 a caller webhook backlog's drain, i dispatch latency (202 -> the provider has the create),
i2 failover latency (a route's first candidate refuses -> the second has the create), j a 200 MB output copied
into the asset store against a plain download, j2 50 concurrent Range reads of it against a static file server,
k reads at scale (1 M jobs, 5 M events, on SQLite and PostgreSQL), l polling 10,000 jobs in flight (and under a
50/s rate limit), l2 two workers on PostgreSQL sharing one 50/s budget.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import (
    asset_phases,
    delivery_phases,
    dispatch_phases,
    http_phases,
    poll_phases,
    replicas,
    report,
    scale_phases,
    sse_phases,
)
from bench.common import ROOT, say

RESULTS_JSON = ROOT / "bench" / "results.json"
RESULTS_MD = ROOT / "bench" / "RESULTS.md"
README = ROOT / "README.md"
MARKERS = ("<!-- bench:start -->", "<!-- bench:end -->")
# wrk must never run out of seeded jobs in phase b (a repeat would be a cheap duplicate): seed for this rate.
EXPECTED_WEBHOOK_RATE = 4000
ALL_PHASES = "a,b,c,d,e,f,g,h,h2,h3,i,i2,j,j2,k,l,l2"


def phase_names(text: str) -> set[str]:
    """`abcdefg`, `h,h2,h3` or both mixed: a letter, with the digits that follow it."""
    names = set(re.findall(r"[a-z]\d*", text.lower()))
    unknown = names - set(ALL_PHASES.split(","))
    if unknown:
        raise SystemExit(f"unknown phases {sorted(unknown)}; the phases are {ALL_PHASES}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--phases", default=ALL_PHASES, help=f"which phases to run (default: {ALL_PHASES})")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds of each wrk phase")
    parser.add_argument(
        "--poll-seconds", type=float, default=120.0, help="measured seconds of l and of its rate-limited half"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke-sized k, l and l2 (k: 100,000 jobs; l, l2: 3,000 and 500 jobs, 20 s windows); implies --no-write",
    )
    parser.add_argument(
        "--asset-mb", type=int, default=200, help="size of the output phases j and j2 copy and serve (MB)"
    )
    parser.add_argument("--profile", type=Path, help="write py-spy profiles of the server in phases b, c and h3 here")
    parser.add_argument(
        "--no-write", action="store_true", help="print only (implied by --profile or a subset of --phases)"
    )
    args = parser.parse_args()
    phases = phase_names(args.phases)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": report.machine(),
        "seconds_per_rate_phase": args.seconds,
        "seconds_per_poll_phase": args.poll_seconds,
    }
    say(f"reelay benchmark on {results['machine']['cpu']} ({results['machine']['cores']} cores)")
    with tempfile.TemporaryDirectory(prefix="reelay-bench-") as tmp:
        work = Path(tmp)
        if "a" in phases:
            results["a"] = http_phases.ceiling(work, args.seconds)
        if "b" in phases:
            profile = args.profile / "b-webhooks.txt" if args.profile else None
            results["b"] = http_phases.webhooks(work, args.seconds, EXPECTED_WEBHOOK_RATE, profile=profile)
            results["b_normal"] = http_phases.webhooks(work, args.seconds, EXPECTED_WEBHOOK_RATE, "NORMAL")
        if "c" in phases:
            profile = args.profile / "c-submissions.txt" if args.profile else None
            results["c"] = http_phases.submissions(work, args.seconds, profile=profile)
        if phases & set("def"):
            results.update(sse_phases.run(work))
        if "g" in phases:
            results["g"] = replicas.run(work)
        if phases & {"h", "h2"}:
            results.update(delivery_phases.latency(work, black_holes="h2" in phases))
        if "h3" in phases:
            results["h3"] = delivery_phases.drain(work, args.profile / "h3-drain.txt" if args.profile else None)
        if "i" in phases:
            results["i"] = dispatch_phases.dispatch(work)
        if "i2" in phases:
            results["i2"] = dispatch_phases.failover(work)
        if "j" in phases:
            results["j"] = asset_phases.copy(work, args.asset_mb * asset_phases.MB)
        if "j2" in phases:
            results["j2"] = asset_phases.serve(work, args.asset_mb * asset_phases.MB)
        if "k" in phases:
            results["k"] = scale_phases.run(work, quick=args.quick)
        sizes = poll_phases.Sizes.of(args.poll_seconds, args.quick)
        if "l" in phases:
            results.update(poll_phases.at_scale(work, sizes))
        if "l2" in phases:
            results["l2"] = poll_phases.replicas(work, sizes)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    results["targets"] = report.targets(results)

    say("")
    say(report.table(results["targets"]))
    say("")
    say(report.generator_table(results))
    say(f"\nfinished in {results['wall_seconds'] / 60:.1f} min")
    if args.no_write:
        return
    if phases != set(ALL_PHASES.split(",")) or args.profile or args.quick or args.asset_mb != 200:
        say("results not written: only a run of every phase without --profile, --quick or --asset-mb replaces them")
        return
    RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
    body = (
        f"Measured {report.machine_line(results['machine'])}\n\n"
        f"{report.table(results['targets'])}\n\n{report.generator_table(results)}\n\n"
        f"Whole run: {results['wall_seconds'] / 60:.1f} min. Raw numbers: `bench/results.json`."
    )
    report.replace_between(RESULTS_MD, *MARKERS, body)
    report.replace_between(README, *MARKERS, body)
    say(f"wrote {RESULTS_JSON.relative_to(ROOT)}, {RESULTS_MD.relative_to(ROOT)} and the README table")


if __name__ == "__main__":
    main()
