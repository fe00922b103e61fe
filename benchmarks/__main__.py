"""Run or list the benchmarks: ``python -m benchmarks [NAME] [ARGS...]``.

- ``python -m benchmarks`` or ``python -m benchmarks --list``: list every benchmark module
  (``benchmarks/<name>.py``) with its one-line description and the command that runs it.
- ``python -m benchmarks NAME [ARGS...]``: run one, exactly as ``python -m benchmarks.NAME [ARGS...]``.
- ``python -m benchmarks --data-dir DIR`` (what ``make bench`` runs): run the quick benchmarks
  (:data:`QUICK_BENCHMARKS`, a few minutes in all on 2 cores), one after another in fresh processes with
  ``--data-dir DIR``, then list the longer ones with their commands. Each prints its own Markdown table.

Every benchmark is run from the repository root; results, with the command and the machine, are recorded
in ``benchmarks/results/<area>.md``. ``benchmarks/RESULTS.md`` is their index: a hand-written summary against
the issues' targets and a list of the records that ``python -m benchmarks.results_index`` regenerates.
"""

from __future__ import annotations

import argparse
import ast
import runpy
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent

#: benchmarks that ``make bench`` runs (each a few minutes at most on 2 CPU cores); the others are listed
QUICK_BENCHMARKS: tuple[str, ...] = ("mnist_baseline", "augmentation")

#: modules of ``benchmarks/`` that are tools, not benchmarks (never listed nor run by ``make bench``)
TOOLS: tuple[str, ...] = ("results_index",)


def available() -> dict[str, str]:
    """``{name: first line of the module docstring}`` for every ``benchmarks/<name>.py``, sorted by name."""
    found: dict[str, str] = {}
    for path in sorted(BENCHMARKS_DIR.glob("*.py")):
        if path.name.startswith("_") or path.stem in TOOLS:
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        except SyntaxError:
            doc = "(does not parse)"
        found[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return found


def usage(name: str, data_dir: str) -> str:
    """The first ``python -m benchmarks.<name> ...`` command in the module docstring, else the plain one."""
    doc = ast.get_docstring(ast.parse((BENCHMARKS_DIR / f"{name}.py").read_text(encoding="utf-8"))) or ""
    for line in doc.splitlines():
        if f"-m benchmarks.{name}" in line:
            command = line.strip().strip("`")
            command = command[command.index("python") :] if "python" in command else command
            return command.replace(".venv/bin/python", "python").replace("../shared/data", data_dir)
    return f"python -m benchmarks.{name} --data-dir {data_dir}"


def listing(data_dir: str = "../shared/data") -> str:
    """A Markdown table of the benchmarks and their commands."""
    rows = ["| benchmark | quick | what | command |", "|---|---|---|---|"]
    for name, doc in available().items():
        quick = "yes" if name in QUICK_BENCHMARKS else ""
        try:
            command = f"`{usage(name, data_dir)}`"
        except SyntaxError:
            command = ""
        rows.append(f"| {name} | {quick} | {doc.replace('|', '/')} | {command} |")
    return "\n".join(rows)


def run_one(name: str, args: list[str]) -> None:
    """Run ``benchmarks/<name>.py`` in this process as ``__main__`` with ``args`` as its command line.

    Raises:
        SystemExit: with a message naming the allowed names when ``name`` is not a benchmark.
    """
    names = available()
    if name not in names:
        raise SystemExit(
            f"Unknown benchmark {name!r}; available: {sorted(names)}. `python -m benchmarks` lists them."
        )
    sys.argv = [f"benchmarks.{name}", *args]
    runpy.run_module(f"benchmarks.{name}", run_name="__main__", alter_sys=True)


def run_quick(data_dir: str) -> int:
    """Run :data:`QUICK_BENCHMARKS` in fresh processes; returns the number that failed."""
    names = available()
    failed = 0
    for name in QUICK_BENCHMARKS:
        if name not in names:
            print(f"## {name}: not present, skipped\n", flush=True)
            continue
        command = [sys.executable, "-m", f"benchmarks.{name}", "--data-dir", data_dir]
        print(f"## {name}\n\n`{' '.join(['python', *command[1:]])}`\n", flush=True)
        start = time.perf_counter()
        code = subprocess.call(command, cwd=BENCHMARKS_DIR.parent)
        print(f"\n({name}: exit status {code}, {time.perf_counter() - start:.0f} s)\n", flush=True)
        failed += code != 0
    others = [n for n in names if n not in QUICK_BENCHMARKS]
    if others:
        print(
            "## Longer benchmarks (run one with `python -m benchmarks NAME ARGS`, the same as `python -m benchmarks.NAME ARGS`)\n"
        )
        print(
            "\n".join(
                line
                for line in listing(data_dir).splitlines()
                if not any(f"| {q} |" in line for q in QUICK_BENCHMARKS)
            )
        )
    return failed


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        run_one(argv[0], argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--data-dir", default=None, help=f"run the quick benchmarks {QUICK_BENCHMARKS} with this data dir"
    )
    args = parser.parse_args(argv)
    if args.list or args.data_dir is None:
        print(listing(args.data_dir or "../shared/data"))
        return
    sys.exit(1 if run_quick(args.data_dir) else 0)


if __name__ == "__main__":
    main()
