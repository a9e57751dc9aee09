"""``python -m domain_embed.train.launch [torchrun options] -m domain_embed.cli train ...``: torchrun for the
chart's multi-node training pods (an indexed Job or a Kubeflow PyTorchJob).

It runs torchrun itself (the same options, the same log), and adds two things a Kubernetes controller needs:

* **An exit status that says whether to retry.** torchrun exits 1 whatever its workers did, so a Job's
  ``podFailurePolicy`` (or a PyTorchJob's ``restartPolicy: ExitCode``) could not tell a user error from a
  lost node. This exits with:

  - ``2`` or ``3`` when a worker did (bad input or config; a failed quality gate): final, a retry cannot help;
  - ``1`` when torchrun gave up on its workers for any other reason (they kept failing through
    ``--max_restarts``; with the c10d rendezvous it has also closed the rendezvous, so a new pod could not join);
  - ``128 + N`` when torchrun itself was stopped by signal N (preemption, eviction, a node drain): it left the
    rendezvous open, so a new pod for this node rejoins it and the others restart their workers with it;
  - ``RETRY_EXIT`` (200) when the rendezvous could not be reached or was lost (its host, the first pod, is
    being replaced): a new pod may succeed. (Kubeflow's ``ExitCode`` policy retries codes >= 128 only.)

* **Which pod hosts the c10d rendezvous.** torchrun decides by comparing the endpoint's name with this
  machine's, which never matches the DNS name of an indexed Job's pod (``<job>-0.<service>``). In an indexed
  Job (``JOB_COMPLETION_INDEX`` is set) with ``--rdzv_backend=c10d``, index 0 hosts it (``is_host``).

With the c10d rendezvous the workers get their own store (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, on a
free port of the first node) instead of sharing the rendezvous store: with the shared store (torch 2.13) the
round after a node was replaced never completed (both sides timed out reading it), while with separate stores
the surviving node restarted its workers and the replacement joined them (tests/train/test_train_launch.py).
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Mapping, Sequence

FINAL_EXITS = (2, 3)   # errors.UserError, errors.QualityGateFailed
RETRY_EXIT = 200       # the rendezvous was unreachable or lost: a new pod may succeed


def child_exit(codes: Iterable[int]) -> int:
    """The pod's exit status when torchrun gave up on its workers, from their exit codes."""
    codes = {int(c) for c in codes}
    for c in FINAL_EXITS:
        if c in codes:
            return c
    return 1


_FLAGS = {"--standalone", "--run-path", "--run_path", "--virtual-local-rank", "--virtual_local_rank"}


def _script_start(argv: Sequence[str]) -> int:
    """Index of the first argument that is not torchrun's own (``-m``/``--module``/``--no-python``, or the
    script): only torchrun's options, before it, are looked at."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-m", "--module", "--no-python", "--no_python") or not a.startswith("-"):
            return i
        i += 1 if ("=" in a or a in _FLAGS) else 2  # `--opt value` takes the next argument
    return len(argv)


def _backend(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    opts = list(argv[:_script_start(argv)])
    for i, a in enumerate(opts):
        if a.startswith(("--rdzv_backend=", "--rdzv-backend=")):
            return a.split("=", 1)[1]
        if a in ("--rdzv_backend", "--rdzv-backend") and i + 1 < len(opts):
            return opts[i + 1]
    return env.get("PET_RDZV_BACKEND", "static")


def torchrun_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """torchrun's arguments, with ``is_host`` added to ``--rdzv_conf`` for an indexed Job's c10d rendezvous
    (index 0 hosts the store) unless it is given."""
    env = os.environ if env is None else env
    argv = list(argv)
    index = env.get("JOB_COMPLETION_INDEX")
    end = _script_start(argv)
    opts = argv[:end]
    backend = _backend(argv, env)
    if backend != "c10d":
        return argv
    if index is None:
        return argv
    host = "is_host=" + ("1" if index.strip() == "0" else "0")
    for i, a in enumerate(opts):
        if a.startswith(("--rdzv_conf=", "--rdzv-conf=")):
            flag, conf = a.split("=", 1)
            if any(kv.split("=", 1)[0].strip() == "is_host" for kv in conf.split(",") if kv):
                return argv
            argv[i] = f"{flag}={conf + ',' if conf else ''}{host}"
            return argv
    return [f"--rdzv_conf={host}", *argv]


def main(argv: Sequence[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
    from torch.distributed.run import parse_args, run

    args = torchrun_args(sys.argv[1:] if argv is None else argv)
    if _backend(args) == "c10d":
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")

    @record  # torchrun's own failure report (which rank, which exit code, its traceback)
    def torchrun() -> None:
        run(parse_args(args))

    try:
        torchrun()
    except ChildFailedError as exc:
        code = child_exit(f.exitcode for f in exc.failures.values())
        print(f"[launch] training workers failed (exit codes {sorted({f.exitcode for f in exc.failures.values()})}); "
              f"exiting {code}" + (" (final: a retry cannot help)" if code in FINAL_EXITS else ""),
              file=sys.stderr, flush=True)
        return code
    except SignalException as exc:
        print(f"[launch] stopped by signal {int(exc.sigval)}; a new pod for this node rejoins the rendezvous",
              file=sys.stderr, flush=True)
        return 128 + int(exc.sigval)
    except Exception as exc:  # the rendezvous or its store: unreachable, timed out, lost with its host
        print(f"[launch] rendezvous failed ({type(exc).__name__}: {exc}); exiting {RETRY_EXIT} (a new pod may "
              f"succeed)", file=sys.stderr, flush=True)
        return RETRY_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
