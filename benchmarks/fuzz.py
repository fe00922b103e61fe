"""Fuzzing of the readers of user files (issue 28): the .lopt artifact loader, the IDX reader, the text reader.

The command (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.fuzz --target all --cases 10000 --seed 0

runs ``--cases`` generated cases against each target with ``hypothesis`` (its generation phase only; the
strategies, the pass criteria and the per-case checks are in ``tests/reliability/fuzzing.py``):

- ``artifact``: ``load_artifact(source, max_unpacked_bytes=16 MiB)`` on random bytes and on real artifacts of
  every kind (state dict, TorchScript, exported program, each also as written before headers had a CRC-32)
  truncated, with bits flipped, bytes overwritten, inserted or deleted, header fields edited (signed again or
  not), a stream byte changed with every CRC-32 recomputed, or given as a folder, a FIFO or a missing path;
- ``idx``: ``read_idx(source, max_bytes=16 MiB)`` on random bytes, headers of any type, rank and dimensions with
  bodies of any length, gzip (truncated), gzip bombs, and well-formed files (the values must come back);
- ``text``: ``read_text_file(path, "text", "label", ..., max_bytes=16 MiB)`` on random bytes and CSV/TSV/JSONL text
  in four encodings with quotes, stray delimiters and garbage, and well-formed files (the rows must come back).

A case fails when the reader raises anything but ``ValueError`` (or a subclass) or ``FileNotFoundError``, returns
a wrong result (a damaged, unsigned artifact loading as another model; a well-formed file read wrong), runs past
``--time-limit`` seconds, or raises the resident set more than ``--memory-limit-mb`` above where it was when the
case began (its peak measured per case). The table (cases, outcomes, failures by type, peak RSS, the largest
rise of one case, the slowest case) is printed and, with
``--record`` (the default), written to ``benchmarks/results/reliability.md`` between its fuzzing markers with
the command, date, machine and load; the first failing cases of each target follow as reproducers. Exit status
1 if any case failed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RECORD = REPO_ROOT / "benchmarks" / "results" / "reliability.md"
START = "<!-- fuzzing: written by python -m benchmarks.fuzz -->"
END = "<!-- end of fuzzing -->"


def _machine() -> str:
    import hypothesis
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, torch {torch.__version__}, "
        f"hypothesis {hypothesis.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() + (" with local changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def record(section: str, path: Path = RECORD) -> None:
    """Put ``section`` between the fuzzing markers of ``path`` (created with a title if missing)."""
    block = f"{START}\n{section.rstrip()}\n{END}"
    if path.exists():
        text = path.read_text()
        if START in text and END in text:
            text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    else:
        text = (
            "# Reliability: fuzzing of the readers, hostile inputs\n\n"
            "Records of the reliability work of issue 28. The fuzzing section is written by "
            "`python -m benchmarks.fuzz`.\n\n" + block + "\n"
        )
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["artifact", "idx", "text", "all"], default="all")
    parser.add_argument("--cases", type=int, default=10_000, help="generated cases per target")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis's seed (default: random)")
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per case")
    parser.add_argument(
        "--memory-limit-mb", type=float, default=256.0, help="rise of the resident set per case (MiB)"
    )
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"write the table to {RECORD.name}",
    )
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error(f"`--cases` must be at least 1, got {args.cases}")
    sys.path.insert(0, str(REPO_ROOT))  # the harness lives beside the tests that run it briefly
    from tests.reliability.fuzzing import TARGETS, fuzz, reproducers, table

    targets = list(TARGETS) if args.target == "all" else [args.target]
    command = "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.fuzz " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = _load()
    print(f"{command}\n{_machine()}\nload average before: {load_before}", flush=True)
    reports, seconds = [], {}
    for name in targets:
        begin = time.perf_counter()
        report = fuzz(
            name,
            args.cases,
            seed=args.seed,
            time_limit=args.time_limit,
            memory_limit=int(args.memory_limit_mb * 2**20),
            progress=lambda done, name=name: print(f"  {name}: {done:,} cases", flush=True),
        )
        seconds[name] = time.perf_counter() - begin
        reports.append(report)
        print(
            f"{name}: {report.cases:,} cases in {seconds[name]:.0f} s, {len(report.failures)} failed",
            flush=True,
        )
    load_after = _load()
    result = table(reports)
    failing = reproducers(reports)
    print("\n" + result)
    if failing:
        print("\nFirst failing cases:\n" + failing)
    if args.record:
        section = "\n".join(
            [
                f"## Fuzzing ({started:%Y-%m-%d %H:%M} UTC, commit {_commit()})",
                "",
                "```bash",
                command,
                "```",
                "",
                f"Machine: {_machine()}; other jobs shared it (load average {load_before} before, "
                f"{load_after} after). Wall time: "
                + ", ".join(f"{name} {s / 60:.1f} min" for name, s in seconds.items())
                + ".",
                "",
                "A case passes when the reader returns or raises `ValueError` (or a subclass) or "
                "`FileNotFoundError`, a damaged but unsigned artifact never loads as another model, a well-formed "
                f"IDX or text file reads back exactly, it ends within {args.time_limit:g} s, and its peak resident set "
                f"rises at most {args.memory_limit_mb:g} MiB above where it began; every reader is given a 16 MiB "
                "read limit. Harness and strategies: `tests/reliability/fuzzing.py`.",
                "",
                result,
                "",
                "First failing cases (reproducers):" if failing else "No case failed.",
                *([failing] if failing else []),
            ]
        )
        record(section)
        print(f"\nrecorded in {RECORD.relative_to(REPO_ROOT)}")
    return 1 if any(r.failures for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
