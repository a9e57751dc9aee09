"""`domain-embed`: one subcommand per pipeline stage, plus `run`, `serve`, `llm serve` and `config`.

Every stage command takes ``--run-dir`` and Hydra-style ``key=value`` overrides. Bad input ends
with a one-line reason and a non-zero exit code; tracebacks are kept for real bugs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import Interrupted, UserError

EPILOG = """examples:
  domain-embed run                                   # the whole pipeline on the sample corpus -> runs/demo
  domain-embed run --run-dir runs/mydocs corpus.path=/data/docs llm=nim
  domain-embed train --run-dir runs/demo train.max_steps=200 --force
  domain-embed status --run-dir runs/demo            # each stage: done, stale (and why), started or not run
  domain-embed serve runs/demo --host 127.0.0.1 --port 8080
"""


# Earlier names of stages, accepted on the command line (``domain-embed synthesize`` is ``synth``).
STAGE_ALIASES = {"synth": ["synthesize"]}

def _add_stage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", type=Path, default=None, help="run directory (default: runs/<name>)")
    p.add_argument("--force", action="store_true", help="rerun even if the stage's manifest says it is up to date")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage logs")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra config overrides")


def build_parser() -> argparse.ArgumentParser:
    from .stages import STAGES

    parser = argparse.ArgumentParser(
        prog="domain-embed",
        description="Tune a general text-embedding model to your documents and serve it (NIM-compatible).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"domain-embed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, st in STAGES.items():
        # one name a stage, the same as its folder, package and config group; the old verb still works
        p = sub.add_parser(name, aliases=STAGE_ALIASES.get(name, []), help=st.description, description=st.description)
        p.set_defaults(stage=name)
        _add_stage_args(p)
        if name == "evaluate":
            p.add_argument("--dataset", type=Path, action="append", default=[],
                           help="also evaluate on this BEIR-layout dataset (corpus.jsonl, queries.jsonl, qrels/)")
            p.add_argument("--real-queries", type=Path, default=None,
                           help="real user queries (JSONL with 'text'/'query', or a BEIR queries.jsonl)")
            p.add_argument("--qrels", type=Path, default=None, help="relevance judgments for --real-queries (TSV)")
            p.add_argument("--endpoint", default=None,
                           help="also evaluate a live /v1/embeddings endpoint (base URL) and check drift")
    p = sub.add_parser("run", help="run every stage in order (curate .. export)")
    _add_stage_args(p)
    p.add_argument("--until", choices=list(STAGES), default=None, help="stop after this stage")

    p = sub.add_parser("serve", help="start Triton and the NIM-compatible gateway for a run")
    p.add_argument("run_dir", type=Path, help="a run directory with a triton/ model repository")
    p.add_argument("--host", default=None, help="gateway host (default from serve.host)")
    p.add_argument("--port", type=int, default=None, help="gateway port (default from serve.port)")
    p.add_argument("overrides", nargs="*", metavar="key=value")

    p = sub.add_parser("llm", help="the local OpenAI-compatible LLM server used for synthesis")
    lsub = p.add_subparsers(dest="llm_command", metavar="llm_command", required=True)
    ls = lsub.add_parser("serve", help="serve the configured local GGUF model on /v1/chat/completions")
    ls.add_argument("--host", default="127.0.0.1")
    ls.add_argument("--port", type=int, default=8090)
    ls.add_argument("overrides", nargs="*", metavar="key=value")

    p = sub.add_parser("status", help="where a run stands: each stage done, stale (and why), started or not run")
    p.add_argument("--run-dir", type=Path, default=None, help="run directory (default: runs/<name>)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides to judge the run against (what `run` with them would redo)")

    p = sub.add_parser("config", help="print the fully resolved config")
    p.add_argument("--run-dir", type=Path, default=None)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def _run_dir_of(args: argparse.Namespace) -> Path:
    from .config import load_config

    run_dir = args.run_dir
    if run_dir is None:
        cfg = load_config(None, args.overrides, save=False)
        run_dir = Path("runs") / cfg.name  # validated: a str
    run_dir = run_dir.resolve()
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"--run-dir {run_dir} exists and is not a directory")
    except PermissionError:
        raise UserError(f"cannot reach the run directory {run_dir} (permission denied on a folder above it); give a "
                        f"--run-dir you can write to") from None
    return run_dir


def _stage_extra(args: argparse.Namespace) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for key in ("dataset", "real_queries", "qrels", "endpoint"):
        val = getattr(args, key, None)
        if val:
            extra[key] = val
    return extra


def _manifests(run_dir: Path) -> dict[str, int]:
    return {str(m): m.stat().st_mtime_ns for m in run_dir.glob("*/manifest.json")}


@contextlib.contextmanager
def _overrides_kept_only_if_used(run_dir: Path) -> Iterator[None]:
    """A command that fails with a user error before any stage finished leaves overrides.json and config.yaml as
    they were: `curate corpus.path=/typo` used to save the typo, and a later `run` with no arguments failed on it
    without saying where it came from. Once a stage has finished with the new overrides they stay (its outputs
    depend on them), and a killed command keeps them too, so its rerun resumes."""
    from .config import OVERRIDES_FILE
    from .files import atomic_write_text

    kept = {name: (run_dir / name).read_text() if (run_dir / name).is_file() else None
            for name in (OVERRIDES_FILE, "config.yaml")}
    before = _manifests(run_dir) if run_dir.is_dir() else {}
    try:
        yield
    except UserError:
        if _manifests(run_dir) == before:
            for name, text in kept.items():
                if text is None:
                    (run_dir / name).unlink(missing_ok=True)
                elif (run_dir / name).is_file() and (run_dir / name).read_text() != text:
                    atomic_write_text(run_dir / name, text)
        raise


def cmd_stage(args: argparse.Namespace) -> int:
    from .config import load_config
    from .rundir import run_dir_lock, run_stage
    from .stages import STAGES

    run_dir = _run_dir_of(args)
    load_config(run_dir, args.overrides, save=False)  # bad overrides are refused before the folder is touched
    with run_dir_lock(run_dir), _overrides_kept_only_if_used(run_dir):  # the lock before config.yaml is written
        cfg = load_config(run_dir, args.overrides)
        run_stage(STAGES[args.stage], run_dir, cfg, STAGES, force=args.force, quiet=args.quiet,
                  extra=_stage_extra(args))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .rundir import run_dir_lock

    run_dir = _run_dir_of(args)
    load_config(run_dir, args.overrides, save=False)  # bad overrides are refused before the folder is touched
    with run_dir_lock(run_dir), _overrides_kept_only_if_used(run_dir):
        return _run_all(args, run_dir)


def _run_all(args: argparse.Namespace, run_dir: Path) -> int:
    from .config import load_config
    from .rundir import run_stage
    from .stages import STAGES

    cfg = load_config(run_dir, args.overrides)
    timings: dict[str, float] = {}
    t0 = time.time()
    for name, st in STAGES.items():
        m = run_stage(st, run_dir, cfg, STAGES, force=args.force, quiet=args.quiet)
        timings[name] = 0.0 if m.get("skipped") else float(m.get("wall_time_s", 0.0))
        if args.until == name:
            break
    total = time.time() - t0
    print(f"\nrun finished in {total:.0f}s: {run_dir}", file=sys.stderr)
    for name, sec in timings.items():
        print(f"  {name:<11} {sec:8.1f}s", file=sys.stderr)
    report = run_dir / "evaluate" / "report.md"
    if report.is_file():
        print("\n" + report.read_text(), file=sys.stderr)
    if (run_dir / "triton").is_dir():
        port = cfg.serve.port  # validated: an int
        print(
            f"serve it:  domain-embed serve {run_dir} --host 127.0.0.1 --port {port}\n"
            f"call it:   curl -s http://127.0.0.1:{port}/v1/embeddings -H 'Content-Type: application/json' "
            f"-d '{{\"input\": [\"How do I create an index?\"], \"model\": \"{cfg.model.served_name}\", "
            f"\"input_type\": \"query\"}}'",
            file=sys.stderr,
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import load_config

    run_dir = args.run_dir.resolve()
    if not (run_dir / "triton").is_dir():
        raise UserError(f"{run_dir} has no triton/ model repository; run `domain-embed export --run-dir {run_dir}` first")
    from .serve.launch import serve_run

    cfg = load_config(run_dir, args.overrides, save=False)
    _refuse_served_spec_drift(run_dir, cfg)
    return serve_run(run_dir, cfg, host=args.host, port=args.port)


def _refuse_served_spec_drift(run_dir: Path, cfg) -> None:
    """Serving takes its spec from triton/encoding.json (exported from train/model); a config that
    disagrees with it is a sign the run changed after export, so say so instead of serving it."""
    import json

    from .config import EncodingSpec, refuse_spec_drift

    path = run_dir / "triton" / "encoding.json"
    if not path.is_file():
        return  # serve_run names the missing file
    try:
        raw = json.loads(path.read_text())
        saved = EncodingSpec.from_dict({k: raw[k] for k in raw if k in EncodingSpec.__dataclass_fields__})
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path} is not a valid encoding spec ({exc}); rerun `domain-embed export --run-dir {run_dir} "
                        "--force`") from None
    refuse_spec_drift(cfg, saved, "the exported model in triton/ has",
                      f"serve with the config it was trained with, or retrain and re-export (`domain-embed run "
                      f"--run-dir {run_dir}`)")


def cmd_llm(args: argparse.Namespace) -> int:
    from .config import load_config
    from .llm.server import serve_forever

    from .schema import typed

    llm = typed(load_config(None, args.overrides, save=False)).llm
    return serve_forever(llm, host=args.host, port=args.port)


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from .config import load_config
    from .stages import STAGES
    from .status import render, run_status

    run_dir = _run_dir_of(args)
    if not run_dir.is_dir():
        raise UserError(f"no run at {run_dir}; start one with `domain-embed run --run-dir {run_dir}`, or give the "
                        f"--run-dir of an existing run")
    cfg = load_config(run_dir, args.overrides, save=False)  # read only: status writes nothing
    status = run_status(run_dir, cfg, STAGES)
    print(json.dumps(status, indent=1) if args.json else render(status))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from .config import load_config

    cfg = load_config(args.run_dir.resolve() if args.run_dir else None, args.overrides, save=False)
    print(OmegaConf.to_yaml(cfg))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # argparse cannot give a trailing nargs="*" positional the key=value items that follow an
    # option (`serve RUN --port 1 a=b`); take them here, and reject anything else as before.
    stray = [u for u in unknown if u.startswith("-") or "=" not in u or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if unknown:
        args.overrides = [*args.overrides, *unknown]
    from .rundir import stop_on_signals

    try:
        if args.command == "serve":
            return cmd_serve(args)  # serving drains requests on SIGTERM itself
        if args.command == "llm":
            return cmd_llm(args)
        if args.command == "config":
            return cmd_config(args)
        if args.command == "status":
            return cmd_status(args)
        # SIGTERM/SIGINT from here on (config loading, between stages, inside one) raise Interrupted
        with stop_on_signals():
            return cmd_run(args) if args.command == "run" else cmd_stage(args)
    except UserError as exc:
        print(f"domain-embed {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:
        # SIGTERM -> 143, SIGINT -> 130: a stopped run is never reported as a success
        print(f"domain-embed {args.command}: {exc}; finished work is kept, rerun to resume", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"domain-embed {args.command}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
