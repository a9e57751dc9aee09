"""User-facing errors: one line that names the problem and what to do next."""


class UserError(Exception):
    """Bad input or a missing prerequisite. The CLI prints the message and exits with code 2."""

    exit_code = 2


class QualityGateFailed(UserError):
    """The tuned model is worse than the base beyond the configured tolerance.

    Raised by the evaluate stage *after* its report is written; the stage runner still writes the
    manifest (with ``counts``) so the report is kept, then re-raises so the command exits 3.
    """

    exit_code = 3

    def __init__(self, message: str, counts: dict | None = None):
        super().__init__(message)
        self.counts = counts or {}


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived: stop now, keep what is saved, exit ``128 + signal``.

    A ``KeyboardInterrupt`` so that ``except Exception`` never swallows it and every ``finally``
    (servers, worker processes, temporary files) still runs on the way out.
    """

    def __init__(self, signum: int):
        import signal

        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")
