"""How far could issue 6's ratios go if Redis did (almost) nothing? bench/burst.py with
the server running a copy of this tree's seatres whose scripts (or store) are cut short:

    .venv/bin/python bench/bounds.py [--variant reserve|no-redis|transitions|all] [burst options]

- `reserve`: reserve.lua answers -3 ("every seat asked is taken") before anything else.
  The burst is then all 409s, each one the least work a script call can be: what is left
  is the HTTP request, the token, the body, the domain's checks and the Redis round
  trip. Its reserve / healthz is the most any Redis-side change could reach.
- `no-redis`: RedisStore.reserve answers "taken" itself, before building the call: the
  same 409s without the round trip. Against `reserve`, what one round trip costs.
- `transitions`: confirm.lua and cancel.lua answer the stored reservation unchanged
  ({2, json}, "already in that state": 200) after one HGET. The workers do what they do
  for a real confirm or cancel (the same request, the same reply decoded and rendered,
  a few dozen bytes shorter), Redis changes nothing. Against the real burst of the same
  run, their ratio is what confirm and cancel would reach if a state change cost Redis
  no more than a read.

Each variant is one whole bench/burst.py run (about 2.5 minutes). The checks of the
phases cut short are left out (their answers are not what Redis holds, by design);
every other check still runs and fails the run as in bench/burst.py. The Redis rows
(redis-benchmark) run the real scripts in every variant."""

import argparse
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import burst

ROOT = Path(__file__).resolve().parent.parent


class Variant(NamedTuple):
    # file of the seatres package -> (the line the cut goes before, the cut)
    cuts: dict[str, tuple[str, str]]
    skipped_checks: set[str]  # of the phases cut short (bench/burst.py's Check names)
    ratios: tuple[str, ...]  # the bounds it measures (Report.ratios keys)


VARIANTS = {
    "reserve": Variant(
        {"lua/reserve.lua": ("if ARGV[6] == '' then\n", "do return -3 end\n")},
        {"reserve burst"},
        ("reserve / healthz",),
    ),
    "no-redis": Variant(
        {
            "store/redis_store.py": (
                "        extra_key, idempotency_args = self._idempotency(event_id, customer_id, "
                "idempotency)\n",
                '        raise _refusal(SEATS_TAKEN, list(seat_ids), "Event", False)\n',
            )
        },
        {"reserve burst"},
        ("reserve / healthz",),
    ),
    "transitions": Variant(
        {
            f"lua/{name}": (
                "local K = event_keys()\n",
                "do return {2, redis.call('HGET', KEYS[4], ARGV[1])} end\n",
            )
            for name in ("confirm.lua", "cancel.lua")
        },
        {"confirm phase", "cancel phase"},
        ("confirm / reserve", "cancel / reserve"),
    ),
}


def cut_copy(variant: str, into: Path) -> Path:
    """A copy of this tree's seatres package in `into`, cut short for `variant`."""
    shutil.copytree(
        ROOT / "seatres", into / "seatres", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name, (before, cut) in VARIANTS[variant].cuts.items():
        path = into / "seatres" / name
        text = path.read_text()
        if text.count(before) != 1:
            raise SystemExit(f"bench/bounds.py: {name} no longer has one {before.strip()!r} line")
        path.write_text(text.replace(before, cut + before))
    return into


def run_variant(variant: str, bench_args: argparse.Namespace) -> int:
    cut = ", ".join(VARIANTS[variant].cuts)
    burst.log(f"variant {variant}: cut short: {cut}")
    copy_dir = Path(tempfile.mkdtemp(prefix=f"seatres-bounds-{variant}-"))
    workdir = Path(tempfile.mkdtemp(prefix="seatres-bench-"))
    try:
        report = burst.new_report(bench_args)
        report.settings["variant"] = variant
        status = burst.run_all(bench_args, workdir, report, cut_copy(variant, copy_dir))
    finally:
        shutil.rmtree(copy_dir, ignore_errors=True)
    if status != burst.EXIT_OK:
        return status
    skipped = VARIANTS[variant].skipped_checks
    report.checks = [c for c in report.checks if c.name not in skipped]
    report.compute_ratios()
    print(f"\n== variant {variant}: {cut} cut short ==")
    report.print_table(sys.stdout)
    for key in VARIANTS[variant].ratios:
        print(f"  bound, {key}: {report.ratios.get(key, 0):.2f}")
    status = burst.verdict(report)
    burst.leave(workdir, keep=status != burst.EXIT_OK)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench/bounds.py",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
        epilog="Any other option is bench/burst.py's (--workers, --connections, --duration, ...).",
    )
    p.add_argument("--variant", choices=(*VARIANTS, "all"), default="all", help="(all)")
    args, rest = p.parse_known_args(argv)
    bench_args = burst.parse_args(rest)
    if bench_args.cluster or bench_args.json or bench_args.keep:
        p.error("--cluster, --json and --keep are bench/burst.py's alone")
    signal.signal(signal.SIGTERM, burst.raise_interrupt)
    status = burst.EXIT_OK
    for variant in VARIANTS if args.variant == "all" else (args.variant,):
        status = run_variant(variant, bench_args) or status
        if status in (burst.EXIT_CANNOT_RUN, 130):
            break
    return status


if __name__ == "__main__":
    sys.exit(main())
