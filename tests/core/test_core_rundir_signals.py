"""SIGTERM/SIGINT in the stage runner: Interrupted, the handler restored, the hard stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from domain_embed.errors import Interrupted
from domain_embed.rundir import stop_on_signals


def test_sigterm_raises_interrupted_with_its_exit_code_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here, long before this ends
    assert info.value.exit_code == 143 and "SIGTERM" in str(info.value)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_stage_stuck_past_the_deadline_is_hard_stopped_with_its_children(tmp_path):
    # A stage that ignores the stop (swallows Interrupted and keeps waiting on its child): the
    # watchdog kills the registered child's process group and exits 143 within the bound.
    pidfile = tmp_path / "child.pid"
    code = textwrap.dedent(f"""
        import subprocess, time
        from domain_embed.rundir import register_child, stop_on_signals
        with stop_on_signals():
            child = subprocess.Popen(["sleep", "60"], start_new_session=True)
            register_child(child, group=True)
            open({str(pidfile)!r}, "w").write(str(child.pid))
            while True:
                try:
                    time.sleep(60)
                except KeyboardInterrupt:
                    pass  # a badly behaved stage
    """)
    env = {**os.environ, "DOMAIN_EMBED_STOP_TIMEOUT_S": "2"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not pidfile.exists() and time.time() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=30)
    took = time.monotonic() - t0
    assert rc == 143, proc.stderr.read()
    assert took < 10, f"hard stop after {took:.1f}s"
    assert "did not stop within 2s" in proc.stderr.read()
    time.sleep(0.2)
    try:
        state = next(ln for ln in open(f"/proc/{child}/status") if ln.startswith("State:"))
    except (OSError, StopIteration):
        state = "gone"
    assert state == "gone" or "Z" in state, f"the child {child} survived the hard stop: {state}"
