"""Where a profiled gateway's CPU goes: py-spy's raw output grouped by what the code does.

    .venv/bin/python bench/gateway_overhead.py --only gateway --concurrency 32 --requests 600 \\
        --gateway-prefix ".venv/bin/py-spy record -r 250 --gil -o /tmp/gw.txt -f raw --"
    .venv/bin/python bench/profile_summary.py /tmp/gw.txt

Start-up (imports, the lifespan) is left out. Each sample counts once, for the first group (in
the order below) whose pattern its stack matches.
"""

from __future__ import annotations

import argparse
import collections
import re

STARTUP = re.compile(r"_find_and_load|lifespan|Gateway.__init__")
GROUPS = [
    ("aiohttp (upstream call: request, read, parse)", r"aiohttp|providers/aio.py"),
    ("uvicorn response send", r"RequestResponseCycle.send"),
    ("uvicorn httptools request in + guard", r"HttpToolsProtocol|_Guard"),
    ("gemini answer (span lift, orjson, base64 check)", r"parse_body|lift_spans|_image_part|parse_response"),
    ("render (orjson + splice)", r"images_response|_splice|json_response"),
    ("thread hops (result file write, db)", r"ThreadPoolExecutor|run_sync|_chain_future|Condition|WorkerThread"),
    ("outputs (probe, finish, host)", r"host_all|storage.py|outputs.py|imaging.py"),
    ("usage journal", r"usage.py"),
    ("auth (sha256 of the key)", r"keys.py|authenticate"),
    (
        "imagegate pipeline (params, plan, dispatch, pricing)",
        r"imagegate/(pipeline|dispatch|params|router|normalize|pricing|wire)\.py",
    ),
    ("starlette + middleware + parsing", r"starlette|server/(middleware|parsing|routes)\.py"),
]


def summarize(path: str) -> tuple[int, collections.Counter[str]]:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    compiled = [(name, re.compile(pattern)) for name, pattern in GROUPS]
    with open(path) as fh:
        for line in fh:
            stack, _, samples = line.rstrip().rpartition(" ")
            if not stack or STARTUP.search(stack):
                continue
            total += int(samples)
            group = next((name for name, pattern in compiled if pattern.search(stack)), "event loop / other")
            counts[group] += int(samples)
    return total, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", help="py-spy record -f raw output")
    args = parser.parse_args()
    total, counts = summarize(args.profile)
    print(f"{total} samples after start-up")
    for name, samples in counts.most_common():
        print(f"{100 * samples / max(total, 1):5.1f}%  {name}")


if __name__ == "__main__":
    main()
