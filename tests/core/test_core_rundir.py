"""Atomic writes, manifests, skip/force and input verification of the stage runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from domain_embed.config import load_config
from domain_embed.errors import QualityGateFailed, UserError
from domain_embed.rundir import (AppendLog, Stage, atomic_open, atomic_write_json, atomic_write_jsonl, read_jsonl,
                                 read_manifest, run_stage, sha256_path)


def _stages(calls):
    def produce(ctx):
        calls.append("a")
        atomic_write_jsonl(ctx.path("a/out.jsonl"), [{"x": 1}, {"x": 2}])
        return {"rows": 2}

    def consume(ctx):
        calls.append("b")
        rows = list(read_jsonl(ctx.path("a/out.jsonl")))
        atomic_write_jsonl(ctx.path("b/out.jsonl"), rows[:1])
        return {"rows": 1}

    a = Stage("a", "a", inputs=[], outputs=["a/out.jsonl"], config_keys=["mine"], fn=produce)
    b = Stage("b", "b", inputs=["a/out.jsonl"], outputs=["b/out.jsonl"], config_keys=["train"], fn=consume)
    return {"a": a, "b": b}


def test_stage_skip_force_and_rerun_on_config_change(tmp_path):
    calls = []
    st = _stages(calls)
    cfg = load_config(None, [], save=False)
    m = run_stage(st["a"], tmp_path, cfg, st, quiet=True)
    assert m["counts"]["rows"] == 2 and m["outputs"]["a/out.jsonl"] == sha256_path(tmp_path / "a/out.jsonl")
    assert "python" in m["versions"] and m["wall_time_s"] >= 0
    run_stage(st["a"], tmp_path, cfg, st, quiet=True)
    assert calls == ["a"], "a finished stage reruns only with --force"
    run_stage(st["a"], tmp_path, cfg, st, force=True, quiet=True)
    assert calls == ["a", "a"]
    cfg2 = load_config(None, ["mine.num_negatives=2"], save=False)
    run_stage(st["a"], tmp_path, cfg2, st, quiet=True)
    assert calls == ["a", "a", "a"], "a changed config makes the stage stale"


def test_missing_input_names_the_stage_to_run(tmp_path):
    st = _stages([])
    cfg = load_config(None, [], save=False)
    with pytest.raises(UserError, match="run `domain-embed a"):
        run_stage(st["b"], tmp_path, cfg, st, quiet=True)


def test_tampered_input_is_refused(tmp_path):
    st = _stages([])
    cfg = load_config(None, [], save=False)
    run_stage(st["a"], tmp_path, cfg, st, quiet=True)
    with open(tmp_path / "a/out.jsonl", "a") as fh:
        fh.write('{"x": 3}\n')
    with pytest.raises(UserError, match="changed since the a stage wrote it"):
        run_stage(st["b"], tmp_path, cfg, st, quiet=True)


def test_input_without_manifest_is_refused(tmp_path):
    st = _stages([])
    cfg = load_config(None, [], save=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "a/out.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(UserError, match="no manifest"):
        run_stage(st["b"], tmp_path, cfg, st, quiet=True)


def test_gate_failure_keeps_report_and_manifest(tmp_path):
    def failing(ctx):
        (ctx.dir / "report.json").write_text("{}")
        raise QualityGateFailed("tuned worse than base", {"passed": False})

    st = {"g": Stage("g", "g", inputs=[], outputs=["g/report.json"], config_keys=[], fn=failing)}
    with pytest.raises(QualityGateFailed):
        run_stage(st["g"], tmp_path, load_config(None, [], save=False), st, quiet=True)
    assert read_manifest(tmp_path, "g")["counts"] == {"passed": False}


def test_atomic_open_leaves_old_file_on_crash(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(p) as fh:
            fh.write("half-written")
            raise RuntimeError("crash")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.txt"], "no temporary files left behind"


def test_append_log_survives_kill(tmp_path):
    """A process killed mid-run keeps every record it appended."""
    log = tmp_path / "log.jsonl"
    code = textwrap.dedent(f"""
        import os, signal
        from domain_embed.rundir import AppendLog
        log = AppendLog({str(log)!r})
        for i in range(5):
            log.append({{"i": i}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    assert [r["i"] for r in read_jsonl(log)] == list(range(5))


def test_read_jsonl_tolerates_torn_last_line_only(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert [r["a"] for r in read_jsonl(p)] == [1, 2]
    p.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(UserError, match="not valid JSON"):
        list(read_jsonl(p))


_HOLDER = """
import sys, time
from pathlib import Path
from domain_embed.rundir import run_dir_lock
with run_dir_lock(Path(sys.argv[1])):
    Path(sys.argv[2]).touch()
    time.sleep(120)
"""


def test_a_second_process_in_the_same_run_dir_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    """Two commands on one run directory would rewrite config.yaml and the stages' outputs under each other.
    The second is refused with the holder named; a torchrun job's ranks (sharing the folder by design) are
    let in; a SIGKILLed holder leaves no stale lock."""
    import time
    from pathlib import Path

    from domain_embed.rundir import run_dir_lock

    run, ready = tmp_path / "run", tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run), str(ready)])
    cli = [str(Path(sys.executable).parent / "domain-embed"), "split", "--run-dir", str(run)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert holder.poll() is None and time.time() < deadline
            time.sleep(0.05)
        p = subprocess.run(cli, capture_output=True, text=True, timeout=120, env=env)
        assert p.returncode == 2, p.stderr
        assert f"another domain-embed process is working in {run} (pid {holder.pid} on " in p.stderr, p.stderr
        assert not (run / "config.yaml").exists()  # refused before it wrote anything
        with pytest.raises(UserError, match=f"pid {holder.pid}"):  # the Python API, as the notebook uses it
            with run_dir_lock(run):
                pass
        # a rank of a torchrun job passes the lock (and stops at what is really missing)
        p = subprocess.run(cli, capture_output=True, text=True, timeout=120, env={**env, "WORLD_SIZE": "2", "RANK": "1"})
        assert p.returncode == 2 and "missing input curate/chunks.jsonl" in p.stderr, p.stderr
    finally:
        holder.kill()
        holder.wait(timeout=10)
    p = subprocess.run(cli, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2 and "missing input curate/chunks.jsonl" in p.stderr, p.stderr
    assert "another domain-embed process" not in p.stderr
    with run_dir_lock(run):  # re-entrant within one process: run_stage inside a held run does not deadlock
        with run_dir_lock(run):
            pass


def test_a_run_dir_this_user_cannot_write_is_a_user_error(tmp_path):
    """Run as another user on a root-owned folder, curate/split/evaluate died with a PermissionError traceback."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    top = Path(tempfile.mkdtemp(prefix="de-ro-", dir="/tmp"))  # pytest's own tmp folders are root-only (0700)
    try:
        os.chmod(top, 0o755)
        ro = top / "ro"
        ro.mkdir()
        os.chmod(ro, 0o555)
        cmd = [str(Path(sys.executable).parent / "domain-embed"), "split", "--run-dir", str(ro / "run")]
        if os.geteuid() == 0:  # root writes anywhere: run the command as nobody, as the audit did
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root without setpriv")
            cmd = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups", *cmd]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(top)}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=top)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot write in the run directory" in proc.stderr and "Traceback" not in proc.stderr


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path):
    """mkstemp's 0600 used to stay on every manifest, report and Triton repository file: another uid (a Triton or
    NIM container mounting the published repository) could not read config.pbtxt or encoding.json."""
    import stat

    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        with atomic_open(tmp_path / "b.bin", "wb") as fh:
            fh.write(b"x")
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"a.json": 0o640, "b.bin": 0o640, "plain.txt": 0o640}, {k: oct(v) for k, v in modes.items()}
