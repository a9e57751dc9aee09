"""The command line every generated document shares: write it, or ``--check`` that it is up to date."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Callable


def main(render: Callable[[], str], out: Path, description: str, tool: str, argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--check", action="store_true", help="exit 1 if the file is stale instead of writing it")
    p.add_argument("--out", type=Path, default=out)
    args = p.parse_args(argv)
    text = render()
    if args.check:
        old = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if old != text:
            diff = difflib.unified_diff(old.splitlines(), text.splitlines(), str(args.out), "generated", lineterm="", n=0)
            print(f"{args.out} is stale; regenerate it with `python {tool}`. First differences:", file=sys.stderr)
            print("\n".join(list(diff)[:30]), file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text.splitlines())} lines)")
    return 0
