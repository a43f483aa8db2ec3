"""Run the fault suite standalone and print its figures.

    python -m tests.fault [--trials N] [--scenario NAME ...] [--seed S] [--quiet]

Starts its own PostgreSQL (an embedded server in a temporary home), runs N trials of each scenario (default:
all five), prints one line per trial and a table, stops the server and removes the home (set
PGDURABLE_FAULT_KEEP=1 to keep it, with the workers' logs). Exit status 0 when every invariant held, 1 when
one did not, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence

from tests.fault.harness import Cluster
from tests.fault.scenarios import SCENARIOS, Tally, run

COLUMNS = ("scenario", "trials", "faults injected", "instances", "completed", "steps", "duplicates", "losses", "wall s")


def table(tallies: Sequence[Tally]) -> str:
    """A Markdown table of the figures (docs/reliability.md quotes it)."""
    rows: list[tuple[str, ...]] = [
        (
            t.scenario,
            str(t.trials),
            str(t.faults),
            str(t.findings.instances),
            str(t.findings.completed),
            str(t.findings.steps),
            str(t.findings.duplicates),
            str(t.findings.losses),
            f"{t.seconds:.0f}",
        )
        for t in tallies
    ]
    total = (
        "total",
        *(str(sum(int(r[i]) for r in rows)) for i in range(1, 8)),
        f"{sum(t.seconds for t in tallies):.0f}",
    )
    rows.append(total)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    rule = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(COLUMNS), rule, *(line(r) for r in rows)])


def observations(tallies: Sequence[Tally]) -> str:
    lines = []
    for t in tallies:
        seen = ", ".join(f"{what}: {count}" for what, count in sorted(t.observed.items()))
        lines.append(f"- {t.scenario}: {seen or 'nothing'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fault", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per scenario (default 10)")
    parser.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="run only this scenario (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choices (default 0)")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    names = args.scenario or list(SCENARIOS)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    # SIGTERM unwinds like Ctrl-C, so that the server is stopped and the workers killed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    tallies: list[Tally] = []
    with Cluster() as cluster:
        log(f"fault suite: own PostgreSQL in {cluster.home}; {args.trials} trials of {', '.join(names)}")
        for name in names:
            tallies.append(run(cluster, name, args.trials, seed=args.seed, log=log))
            log(tallies[-1].report())
    print()
    print(table(tallies))
    print()
    print("Observed:")
    print(observations(tallies))
    command = f"python -m tests.fault --trials {args.trials} --seed {args.seed}"
    command += "".join(f" --scenario {name}" for name in args.scenario or ())
    print(f"\nwall time {time.monotonic() - began:.0f} s ({command})")
    for tally in tallies:
        if not tally.ok:
            print(tally.report())
    return 0 if all(t.ok for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
