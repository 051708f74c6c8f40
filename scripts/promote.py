#!/usr/bin/env python3
"""Moves one image, by digest, through the tiers dev → pre-staging → staging → production, each step only after the
prober passed against the tier before.

A tier's release file, deploy/releases/<tier>.yaml, holds the one value of the chart that says which build runs
(`image.digest`); the chart refuses a tag. Nothing but this script writes those files:

  promote.py record dev --digest sha256:<64 hex>
      a built image enters the pipeline (its digest from the registry push);
  promote.py promote <tier> --report REPORT.json [--max-age-hours 24] [--apply]
      the digest the tier before runs moves to <tier>, when REPORT.json — `quarry probe --report-json` run against
      the tier before (`--environment <that tier> --image-digest <its digest>`) — says the probe passed, recently,
      against that very digest, and names the version and commit the wfe reported. With --apply it then runs the
      `helm upgrade` that deploys it (otherwise it prints it);
  promote.py show
      what every tier runs.

Exit status 0 when done, 1 when the promotion is refused (every reason printed), 2 on a usage error.
"""

import argparse
import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

from chart_common import DIGEST

TIERS = ("dev", "pre-staging", "staging", "production")
# How far in the future a report's time may lie (clock skew between the prober and this machine).
SKEW = datetime.timedelta(minutes=5)
ROOT = Path(__file__).resolve().parent.parent


class Refused(Exception):
    """The promotion may not happen; the message says every reason."""


def release_path(releases: Path, tier: str) -> Path:
    return releases / f"{tier}.yaml"


def read_digest(releases: Path, tier: str):
    """The digest a tier's release file names, or None when it has none yet."""
    path = release_path(releases, tier)
    if not path.exists():
        return None
    values = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\s+digest:\s*\"?([^\"\s]+)\"?\s*$", line)
        if match:
            values["digest"] = match.group(1)
    digest = values.get("digest")
    if digest is None or not DIGEST.match(digest):
        raise Refused(f"{path}: no image.digest of the form sha256:<64 hex digits>")
    return digest


def write_release(releases: Path, tier: str, digest: str, provenance: str) -> Path:
    path = release_path(releases, tier)
    releases.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# The image {tier} runs: written by scripts/promote.py, never by hand (docs/environments.md, \"Promotion\").\n"
        f"# {provenance}\n"
        "image:\n"
        f"  digest: \"{digest}\"\n"
    )
    return path


def parse_time(text):
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else None


def judge_report(report: dict, previous: str, digest: str, now: datetime.datetime, max_age: datetime.timedelta):
    """Every reason `report` does not let `digest` leave tier `previous`; empty when it does."""
    reasons = []
    if report.get("environment") != previous:
        reasons.append(f"the report is of environment {report.get('environment')!r}, not {previous!r}, the tier before")
    if report.get("image_digest") != digest:
        reasons.append(f"the report tested image {report.get('image_digest')!r}, but {previous} runs {digest}")
    if report.get("passed") is not True:
        failed = [step.get("name") for step in report.get("steps") or [] if step.get("error")]
        reasons.append(f"the probe did not pass (failed steps: {failed or 'none recorded'})")
    for field in ("version", "commit"):
        if not report.get(field):
            reasons.append(f"the report names no {field}: which build passed is unknown")
    finished = parse_time(report.get("finished_at"))
    if finished is None:
        reasons.append(f"finished_at {report.get('finished_at')!r} is not an RFC 3339 time with its offset")
    elif finished > now + SKEW:
        reasons.append(f"the report finished at {finished.isoformat()}, in the future")
    elif now - finished > max_age:
        reasons.append(f"the report is {now - finished} old (at most {max_age})")
    return reasons


def promote(releases: Path, tier: str, report: dict, now: datetime.datetime, max_age: datetime.timedelta) -> str:
    """Writes tier's release file from the tier before's digest and returns what was done; raises Refused."""
    if tier not in TIERS or tier == TIERS[0]:
        raise Refused(f"{tier!r} is not a tier one promotes to: {', '.join(TIERS[1:])}")
    previous = TIERS[TIERS.index(tier) - 1]
    digest = read_digest(releases, previous)
    if digest is None:
        raise Refused(f"{previous} runs no release yet ({release_path(releases, previous)} is missing)")
    reasons = judge_report(report, previous, digest, now, max_age)
    if reasons:
        raise Refused("; ".join(reasons))
    if read_digest(releases, tier) == digest:
        return f"{tier} already runs {digest}"
    provenance = (
        f"From {previous}: the prober passed there at {report['finished_at']} against version {report['version']} "
        f"(commit {report['commit']})."
    )
    write_release(releases, tier, digest, provenance)
    return f"{tier} now runs {digest} ({provenance})"


def helm_command(tier: str, chart: Path, releases: Path):
    return [
        "helm", "upgrade", "--install", "quarry", str(chart),
        "--namespace", f"quarry-{tier}",
        "-f", str(chart / f"values-{tier}.yaml"),
        "-f", str(release_path(releases, tier)),
        "--wait", "--timeout", "15m",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", type=Path, default=ROOT / "deploy" / "releases")
    parser.add_argument("--chart", type=Path, default=ROOT / "deploy" / "helm" / "quarry")
    commands = parser.add_subparsers(dest="command", required=True)
    record = commands.add_parser("record", help="a built image enters the pipeline at dev")
    record.add_argument("tier", choices=[TIERS[0]])
    record.add_argument("--digest", required=True)
    move = commands.add_parser("promote", help="move the tier before's image to TIER")
    move.add_argument("tier", choices=TIERS[1:])
    move.add_argument("--report", type=Path, required=True, help="quarry probe --report-json, against the tier before")
    move.add_argument("--max-age-hours", type=float, default=24.0)
    move.add_argument("--apply", action="store_true", help="run helm upgrade (otherwise print it)")
    commands.add_parser("show", help="what every tier runs")
    args = parser.parse_args(argv)

    try:
        if args.command == "show":
            for tier in TIERS:
                print(f"{tier:12} {read_digest(args.releases, tier) or '(nothing yet)'}")
            return 0
        if args.command == "record":
            if not DIGEST.match(args.digest):
                raise Refused(f"{args.digest!r} is not sha256:<64 hex digits>: tiers run digests, never tags")
            write_release(args.releases, TIERS[0], args.digest, "Recorded from the image build.")
            print(f"{TIERS[0]} now runs {args.digest}")
            return 0
        try:
            report = json.loads(args.report.read_text())
        except (OSError, ValueError) as err:
            raise Refused(f"cannot read the prober's report {args.report}: {err}")
        if not isinstance(report, dict):
            raise Refused(f"{args.report} is not a prober report (a JSON object)")
        now = datetime.datetime.now(datetime.timezone.utc)
        print(promote(args.releases, args.tier, report, now, datetime.timedelta(hours=args.max_age_hours)))
    except Refused as refused:
        print(f"promote: refused: {refused}", file=sys.stderr)
        return 1
    command = helm_command(args.tier, args.chart, args.releases)
    if args.apply:
        return subprocess.run(command).returncode
    print("deploy with:", " ".join(command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
