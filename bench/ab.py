"""Two versions of seatres side by side: which one answers the burst with less?

    git worktree add /tmp/old <commit>
    .venv/bin/python bench/ab.py --old /tmp/old [--rounds 8] [--duration 5]

Starts one Redis and two `seatres serve --workers 2` on it: A runs the seatres of the
checkout given with --old, B the one of this tree. Then, for each round, each server in
turn (A first in even rounds, B first in odd ones) gets a phase of `GET /healthz` and a
burst of `POST /reservations` on a fresh 20,000-seat event of its own, with wrk and the
same scripts and connections as bench/burst.py. It prints every phase (requests/s and
CPU µs per request of the server, Redis and wrk), then the medians and each round's
burst / healthz of both.

Why: whole bench/burst.py runs move 10-15 % a phase from one run to the next on a shared
machine, so a change worth a few per cent cannot be told from a pair of runs. Here both
versions meet the same moments of the machine, on the same Redis, within seconds of each
other. Redis's automatic AOF rewrites are off for the run (the bursts' holds would set one
off in the middle of some phases and not others); the AOF itself is kept, as in the bench.

The invariant checks of bench/burst.py are not repeated here: run it for those."""

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import burst

ROOT = Path(__file__).resolve().parent.parent  # this tree, whose seatres B runs


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """This script's options, then bench/burst.py's (any other option given here, and
    --duration 5 unless given)."""
    p = argparse.ArgumentParser(
        prog="bench/ab.py",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
        epilog="Any other option is bench/burst.py's (--workers, --connections, --seats, "
        "--redis-transport, ...), with --duration 5 by default here.",
    )
    p.add_argument("--old", type=Path, required=True, help="checkout of the version A runs")
    p.add_argument("--rounds", type=int, default=8, help="rounds (8)")
    args, rest = p.parse_known_args(argv)
    if not (args.old / "seatres" / "__init__.py").is_file():
        p.error(f"--old {args.old}: no seatres package there")
    bench_args = burst.parse_args(["--duration=5", *rest])
    if bench_args.cluster or bench_args.json or bench_args.keep:
        p.error("--cluster, --json and --keep are bench/burst.py's alone")
    return args, bench_args


Row = tuple[float, float, float, float]  # requests/s, then CPU µs a request: API, Redis, wrk


def run_phase(bench: burst.Bench, name: str, script: str, env: dict[str, str]) -> Row:
    run = bench.wrk(name, script, env, bench.args.duration)
    rate = run.requests / run.seconds
    usage = run.usage

    def per_request(percent: float) -> float:
        return percent / 100 / rate * 1e6

    return rate, per_request(usage.api), per_request(usage.redis), per_request(usage.loadgen)


def median(rows: list[Row], column: int) -> float:
    return statistics.median(row[column] for row in rows)


def main(argv: Sequence[str] | None = None) -> int:
    args, bench_args = parse_args(argv)
    benches: dict[str, burst.Bench] = {}
    rows: dict[tuple[str, str], list[Row]] = {}
    workdirs = {name: Path(tempfile.mkdtemp(prefix=f"seatres-ab-{name}-")) for name in "ab"}
    done = False
    try:
        a = burst.Bench(bench_args, workdirs["a"], args.old)
        a.start()
        benches["A"] = a
        b = burst.Bench(bench_args, workdirs["b"], ROOT, a.redis_server)
        b.start()
        benches["B"] = b
        assert a.client is not None
        a.client.config_set("auto-aof-rewrite-percentage", 0)
        for bench in benches.values():
            burst.warm_up(bench)
        for r in range(args.rounds):
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                bench = benches[name]
                healthz = run_phase(bench, f"healthz-{r}", "healthz.lua", {})
                event = f"burst-{r}-{name}"
                bench.create_event(event, bench_args.seats)
                env = {"BENCH_EVENT": event, "BENCH_SEATS": str(bench_args.seats)}
                reserve = run_phase(bench, f"burst-{r}", "reserve.lua", env)
                for phase, row in (("healthz", healthz), ("burst", reserve)):
                    rows.setdefault((name, phase), []).append(row)
                    print(
                        f"round {r} {name} {phase:7} {row[0]:8,.0f} req/s   µs a request: "
                        f"API {row[1]:6.1f}  Redis {row[2]:5.1f}  wrk {row[3]:5.1f}",
                        flush=True,
                    )
        done = True
    finally:
        for name in ("B", "A"):  # B uses A's Redis
            if name in benches:
                benches[name].stop()
        # kept when the run fails, for their logs; A's holds the Redis data: hundreds of MB
        for workdir in workdirs.values():
            burst.leave(workdir, keep=not done)
    print()
    for name, label in (("A", f"A ({args.old})"), ("B", "B (this tree)")):
        hz, bu = rows[(name, "healthz")], rows[(name, "burst")]
        ratios = [b_[0] / h[0] for h, b_ in zip(hz, bu, strict=True)]
        print(
            f"{label}: medians: healthz {median(hz, 0):,.0f} req/s (API {median(hz, 1):.1f} µs); "
            f"burst {median(bu, 0):,.0f} req/s (API {median(bu, 1):.1f}, Redis "
            f"{median(bu, 2):.1f}, wrk {median(bu, 3):.1f} µs); burst / healthz "
            f"{statistics.median(ratios):.3f}, by round {' '.join(f'{x:.3f}' for x in ratios)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
