"""Cost of the PII scan (core.pii) in µs per KB of prompt (issue 9). Not a test: numbers to compare.

    python benchmarks/pii_scan.py                 every kind, on five texts of about 16 KB each
    options: --kb N (size of each text)  --rounds N  --profile

Texts: plain English without a digit (the pre-check skips the regex), English with the numbers a prompt carries
(dates, versions, counts, prices, hashes; no PII), PII-dense text (a value every ~80 characters), a chat body
walked by `redact_body`, and JSON tool output. Each is timed over many iterations with time.perf_counter; the
best round of --rounds is reported, with the median, since a shared machine only ever makes it slower.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable

from agentledger.core.pii import KINDS, redact_body, redact_text, scan_text

ENGLISH = (
    "The planner agent reads the ticket, splits it into steps and hands each one to a worker. A worker "
    "searches the knowledge base, drafts an answer and asks the reviewer to check the tone before it is sent "
    "back to the customer. When the reviewer disagrees, the planner decides whether to retry or escalate. "
)
NUMBERS = (
    "Release v2.14.3 shipped on 2024-03-15 at 10:30 UTC; build 10.0.19041.1234 fixed 37 of 42 issues. The "
    "p95 latency fell from 1,240 ms to 380 ms over 12 hours, order 1234567890123 cost $1,299.00, and commit "
    "d41d8cd98f00b204e9800998ecf8427e (uuid 550e8400-e29b-41d4-a716-446655440000) touched 128 files. "
)
DENSE = (
    "Contact jane.doe@example.com or +44 20 7946 0958; card 4111 1111 1111 1111 exp 12/27. "
    "IBAN DE89 3704 0044 0532 0130 00, SSN 123-45-6789, phone (555) 123-4567. "
    "Key sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12 and AKIAIOSFODNN7EXAMPLE, backup bob@example.org. "
)
JSON = (
    '{"id": "call_8f2a", "status": "ok", "rows": [{"name": "Ada", "email": "ada@example.com", "score": 97},'
    ' {"name": "Linus", "email": null, "score": 88}], "elapsed_ms": 412, "next": "cursor_91ab3"} '
)


def text_of(unit: str, kb: int) -> str:
    return (unit * (kb * 1024 // len(unit) + 1))[: kb * 1024]


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    """(best, median) seconds per call over `rounds` rounds, each long enough (~0.2 s) to time well."""
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    n = max(1, int(0.2 / once))
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        results.append((time.perf_counter() - start) / n)
    return min(results), statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kb", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    kb = args.kb
    chat = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": text_of(ENGLISH, kb // 4)},
            {"role": "user", "content": [{"type": "text", "text": text_of(NUMBERS, kb // 4)}]},
            {"role": "assistant", "content": text_of(DENSE, kb // 4)},
            {"role": "user", "content": text_of(JSON, kb // 4)},
        ],
    }
    english, numbers, dense, tool = (text_of(unit, kb) for unit in (ENGLISH, NUMBERS, DENSE, JSON))
    cases: list[tuple[str, Callable[[], object]]] = [
        ("clean English, no digits", lambda: scan_text(english, KINDS)),
        ("English with numbers, no PII", lambda: scan_text(numbers, KINDS)),
        ("PII-dense (scan)", lambda: scan_text(dense, KINDS)),
        ("PII-dense (redact)", lambda: redact_text(dense, KINDS)),
        ("JSON tool output", lambda: scan_text(tool, KINDS)),
        ("chat body, mixed (redact_body)", lambda: redact_body(chat, KINDS)),
    ]
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _, fn in cases:
            for _ in range(50):
                fn()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(20)
        return
    print(f"{kb} KB per text, best and median of {args.rounds} rounds, µs per KB")
    for name, fn in cases:
        best, median = timed(fn, args.rounds)
        print(f"  {name:<32} {best * 1e6 / kb:8.2f}  {median * 1e6 / kb:8.2f}")


if __name__ == "__main__":
    main()
