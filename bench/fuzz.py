"""Fuzz the gateway: ~3,000 seeded hostile requests against real gateways on loopback.

Cases come from tests/fuzzing.py (the same generator as tests/server/test_fuzz.py): JSON
generations, JSON edits and multipart edits with random and mutated field names, types, values,
encodings (NaN, Infinity, lone surrogates, invalid UTF-8, UTF-16 bodies, charsets), nesting,
sizes, boundaries and headers; and, for about one case in five, a valid request to a fake
upstream that answers with garbage (deeply nested JSON, odd types, non-finite retry hints, HTML,
absurd token counts). Four gateways run in this process, one per provider (Gemini, Replicate,
fal, OpenAI-compatible), each with its fake upstream from tests/fakes/ on its own loopback port.

It counts answers by status, for client and upstream cases apart, and lists every 5xx with its
request. The rules: no 500 at all, no 5xx for client input (502/503/504 only when the upstream
failed), OpenAI's error shape on every error, and every request answered. Exit status 1 when a
rule is broken. The same seed gives the same requests.

    PYTHONPATH=src .venv/bin/python bench/fuzz.py                       # 3,000 cases, seed 8
    PYTHONPATH=src .venv/bin/python bench/fuzz.py --cases 500 --seed 3 --list problems
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python bench/fuzz.py   # the same cases against other code
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.fuzzing and its fakes

from tests.fuzzing import Outcome, make_cases, run_cases  # noqa: E402


class _Count(logging.Handler):
    """Counts what the gateway logs at ERROR (an unhandled exception is logged there)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.records[record.getMessage().split(" on ")[0]] += 1


def describe(outcome: Outcome) -> str:
    case = outcome.case
    body = case.body[:120].decode("latin-1").encode("unicode_escape").decode("ascii")
    flag = f"  <-- {outcome.problem}" if outcome.problem else ""
    return (
        f"#{case.index:<5} {outcome.status} {case.kind:<8} {case.provider:<9} {case.path} "
        f"{case.what[:160]} | body {body}{flag}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument(
        "--list",
        choices=["all", "problems", "none"],
        default="all",
        help="which 5xx answers (and rule breaks) to list: all of them, only the rule breaks, none",
    )
    parser.add_argument("--json", type=Path, help="also write the counts and the listed cases here")
    args = parser.parse_args(argv)

    import imagegate

    # The multipart parser logs every malformed body it meets; the gateway's own ERRORs are counted.
    logging.getLogger("python_multipart").setLevel(logging.CRITICAL)
    counter = _Count()
    gateway_log = logging.getLogger("imagegate")
    gateway_log.addHandler(counter)
    gateway_log.propagate = False

    cases = make_cases(args.seed, args.cases)
    print(f"imagegate from {Path(imagegate.__file__).parent}; {len(cases)} cases, seed {args.seed}", flush=True)
    report = run_cases(cases)

    listed = [o for o in report.outcomes if o.status >= 500 or o.problem is not None]
    if args.list == "problems":
        listed = [o for o in listed if o.problem is not None]
    elif args.list == "none":
        listed = []
    for outcome in listed:
        print(describe(outcome))

    kinds = Counter(c.kind for c in cases)
    print(f"\n{len(cases)} cases in {report.seconds:.1f} s: {kinds['client']} client, {kinds['upstream']} upstream")
    for kind in ("client", "upstream"):
        print(f"  {kind:<8} by status: {dict(sorted(report.by_status(kind).items()))}")
    print(f"  all      by status: {dict(sorted(report.by_status().items()))}")
    fives = report.server_errors
    print(
        f"5xx: {len(fives)} (500: {sum(o.status == 500 for o in fives)}; "
        f"client input: {sum(o.case.kind == 'client' for o in fives)})"
    )
    print(f"rule breaks: {len(report.problems)} {dict(Counter(o.problem for o in report.problems))}")
    print(f"gateway ERROR log lines: {sum(counter.records.values())} {dict(counter.records)}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "seed": args.seed,
                    "cases": len(cases),
                    "seconds": round(report.seconds, 2),
                    "by_status": {
                        k: dict(report.by_status(k if k != "all" else None)) for k in ("client", "upstream", "all")
                    },
                    "problems": dict(Counter(o.problem for o in report.problems)),
                    "listed": [describe(o) for o in listed],
                },
                indent=1,
            )
        )
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
