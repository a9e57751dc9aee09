"""Real Lightning training at tiny size: the model directory, DDP on 2 gloo processes, kill-and-resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from domain_embed.config import EncodingSpec, load_config
from domain_embed.rundir import read_jsonl, run_stage
from domain_embed.stages import STAGES
from split_fixture import write_split

CLI = str(Path(sys.executable).parent / "domain-embed")
TINY = ["model.max_query_length=32", "model.max_passage_length=64", "mine.num_negatives=3", "mine.top_k=10",
        "train.batch_size=2", "train.num_negatives=2", "train.max_steps=6", "train.checkpoint_every_n_steps=2",
        "train.val_every_n_steps=4", "train.learning_rate=5e-5", "train.accelerator=cpu", "train.devices=1"]


def _env(**kw):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **kw}


def _hooked_env(**kw):
    """The environment with tests/train/hooks first on PYTHONPATH (its sitecustomize; see there)."""
    hook = str(Path(__file__).parent / "hooks")
    return _env(PYTHONPATH=os.pathsep.join([hook, *filter(None, [os.environ.get("PYTHONPATH")])]), **kw)


def _train(run: Path, *over: str, env=None, timeout=400):
    return subprocess.run([CLI, "train", "--run-dir", str(run), "--quiet", *over], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout)


@pytest.fixture(scope="module")
def mined_run(tmp_path_factory) -> Path:
    run = write_split(tmp_path_factory.mktemp("mined") / "run")
    cfg = load_config(run, TINY)  # saved in the run dir, so the CLI below sees the same overrides
    run_stage(STAGES["mine"], run, cfg, STAGES, quiet=True)
    return run


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def trained(mined_run, tmp_path_factory) -> Path:
    run = _copy(mined_run, tmp_path_factory.mktemp("trained") / "run")
    p = _train(run)
    assert p.returncode == 0, p.stderr[-3000:]
    return run


def _weights(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_model_dir_loads_in_sentence_transformers_and_matches_our_encoder(trained, minilm_path):
    from sentence_transformers import SentenceTransformer

    from domain_embed.encoding import Encoder

    cfg = load_config(trained, [], save=False)
    spec = EncodingSpec.from_config(cfg)
    model_dir = trained / "train" / "model"
    st = SentenceTransformer(str(model_dir), device="cpu")
    ours = Encoder(spec, model_dir, device="cpu")
    queries = ["How do I undo a transaction?", "Which file controls client authentication?"]
    passages = ["ROLLBACK discards every change made since the transaction began.", "VACUUM reclaims storage."]
    for texts, kind in ((queries, "query"), (passages, "passage")):
        a = st.encode(texts, prompt_name=kind, convert_to_numpy=True, normalize_embeddings=False)
        b = ours.encode(texts, kind)
        assert np.abs(a - b).max() < 1e-4, kind
    prompts = json.loads((model_dir / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts == {"query": spec.query_prefix, "passage": spec.passage_prefix}
    # plain transformers too
    from transformers import AutoModel, AutoTokenizer

    AutoModel.from_pretrained(str(model_dir)), AutoTokenizer.from_pretrained(str(model_dir))
    # it actually trained: weights moved away from the base model (part of the way back, at train.base_mix<1)
    base, tuned = _weights(minilm_path), _weights(model_dir)
    common = [k for k in tuned if k in base]
    assert common and max(float(np.abs(base[k] - tuned[k]).max()) for k in common) > 1e-5
    card = (model_dir / "README.md").read_text()
    assert "all-MiniLM-L6-v2" in card and "validation nDCG@10" in card and "learning_rate" in card


def test_metrics_log_has_every_step_and_validations(trained):
    rows = list(read_jsonl(trained / "train" / "metrics.jsonl"))
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) and r["lr"] >= 0 for r in rows if "loss" in r)
    # the base (step 0), the cadence (every 4), and the last step, which the cadence misses
    vals = [r["step"] for r in rows if "val_ndcg@10" in r]
    assert vals == [0, 4, 6]
    m = json.loads((trained / "train" / "manifest.json").read_text())
    assert m["counts"]["steps"] == 6 and m["counts"]["best_step"] in (4, 6)
    summary = json.loads((trained / "train" / "summary.json").read_text())
    scores = {r["step"]: r["val_ndcg@10"] for r in rows if "val_ndcg@10" in r}
    # the shipped weights are the better of step 4 and step 6, by the validation that scored both
    assert summary["best_val_ndcg@10"] == pytest.approx(max(scores[4], scores[6]), abs=1e-6)
    assert summary["best_step"] == (6 if scores[6] > scores[4] else 4)


def test_ddp_two_gloo_processes_end_with_identical_weights(mined_run, tmp_path):
    run = _copy(mined_run, tmp_path / "run")
    # hooks/sitecustomize.py hashes each rank's final weights in the test, not in the product
    hashes = tmp_path / "hashes"
    env = _hooked_env(DOMAIN_EMBED_TEST_WEIGHT_HASH_DIR=str(hashes))
    p = _train(run, "train.strategy=ddp", "train.devices=2", "train.max_steps=3", "train.val_every_n_steps=2", env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    h0 = json.loads((hashes / "rank0.json").read_text())["sha256"]
    h1 = json.loads((hashes / "rank1.json").read_text())["sha256"]
    assert h0 == h1, "DDP ranks diverged"
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    # both ranks ran the last step's validation (off the cadence of 2) together
    assert [r["step"] for r in read_jsonl(run / "train" / "metrics.jsonl") if "val_ndcg@10" in r] == [0, 2, 3]
    assert summary["best_step"] in (2, 3) and summary["best_val_ndcg@10"] is not None


def test_killed_training_resumes_and_matches_the_uninterrupted_run(mined_run, trained, tmp_path):
    run = _copy(mined_run, tmp_path / "run")
    last = run / "train" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([CLI, "train", "--run-dir", str(run), "--quiet"], env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert last.exists(), proc.stderr.read()[-2000:] if proc.poll() is not None else "no checkpoint in time"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "train" / "model").exists(), "the run finished before it could be killed"
    p = _train(run)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["resumed"] and summary["steps"] == 6
    a, b = _weights(trained / "train" / "model"), _weights(run / "train" / "model")
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert diff < 1e-6, f"resumed weights differ from the uninterrupted run by {diff}"
    steps = [r["step"] for r in read_jsonl(run / "train" / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


def _procs_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (e.g. a run directory)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((ln for ln in (d / "status").read_text().splitlines() if ln.startswith("State:")), "")
        except OSError:
            continue
        if text in cmd and "Z" not in state.split()[1:2]:
            out.append(f"{d.name}: {cmd.strip()}")
    return out


def test_sigterm_stops_training_saves_a_checkpoint_and_the_rerun_resumes(mined_run, trained, tmp_path):
    import random

    import torch

    from domain_embed.rundir import stop_timeout_s

    run = _copy(mined_run, tmp_path / "run")
    # of 6 steps: a random step, after real progress (TEST_SIGTERM_STEP replays one)
    target = int(os.environ.get("TEST_SIGTERM_STEP") or random.randint(1, 4))
    proc = subprocess.Popen([CLI, "train", "--run-dir", str(run)], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = run / "train" / "metrics.jsonl"
    deadline = time.time() + 300
    step = 0
    while step < target and proc.poll() is None and time.time() < deadline:
        if metrics.is_file():
            step = max([r["step"] for r in read_jsonl(metrics) if "loss" in r], default=0)
        time.sleep(0.05)
    assert step >= target, (proc.poll(), proc.stderr.read()[-2000:] if proc.poll() is not None else "no progress")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # to `domain-embed train` only, as Kubernetes does to PID 1
    try:
        proc.wait(timeout=stop_timeout_s() + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"domain-embed train still running {stop_timeout_s() + 10:.0f}s after SIGTERM")
    took = time.monotonic() - t0
    err = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert took < stop_timeout_s(), f"stopped in {took:.1f}s, over the {stop_timeout_s()}s bound"
    assert not _procs_mentioning(str(run)), _procs_mentioning(str(run))  # no worker (or rank) left behind
    assert "stopped by SIGTERM" in err and "rerun" in err
    assert not (run / "train" / "model").exists() and not (run / "train" / "manifest.json").exists()
    ckpt_step = int(torch.load(run / "train" / "checkpoints" / "last.ckpt", map_location="cpu",
                               weights_only=False)["global_step"])
    assert ckpt_step >= step, f"the stop saved step {ckpt_step}, but step {step} had already finished"

    p = _train(run)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["resumed"] and summary["steps"] == 6
    rows = list(read_jsonl(metrics))
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6], f"target {target}, stopped at {ckpt_step}"
    assert [r["step"] for r in rows if "val_ndcg@10" in r] == [0, 4, 6], f"target {target}, stopped at {ckpt_step}"
    a, b = _weights(trained / "train" / "model"), _weights(run / "train" / "model")
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert diff < 1e-6, f"resumed weights differ from the uninterrupted run by {diff} (stopped at {ckpt_step})"


def test_budget_caps_the_steps_from_a_timed_probe_and_says_so(mined_run, tmp_path):
    """train.budget_minutes far below one step: the probe decides, one step is trained (with the
    schedule planned for it), the decision is kept for a resume, reported, and the user is told."""
    run = _copy(mined_run, tmp_path / "run")
    p = _train(run, "train.max_steps=-1", "train.epochs=3", "train.budget_minutes=0.0001")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "train.budget_minutes=0.0001" in p.stderr and "training 1 steps" in p.stderr, p.stderr[-2000:]
    summary = json.loads((run / "train" / "summary.json").read_text())
    kept = json.loads((run / "train" / "checkpoints" / "budget.json").read_text())
    assert summary["steps"] == kept["steps"] == 1 and kept["capped"] is True
    assert kept["planned_steps"] > 1 and kept["probe_step_s"] > 0
    assert summary["budget"] == kept and summary["planned_steps"] == 1
    assert [r["step"] for r in read_jsonl(run / "train" / "metrics.jsonl") if "loss" in r] == [1]


def test_a_run_slower_than_its_probe_stops_at_the_budget_and_a_rerun_ends_on_the_same_step(mined_run, tmp_path):
    """The budget's plan comes from a timed probe. When every step after it runs 4 s slower (a fault: the
    machine got busier), the planned steps would overrun the budget by their slowdown; the run stops at
    the step the deadline allows, validates it, keeps it in budget.json, and a rerun that only changes
    what is shipped (train.base_mix) resumes there and trains nothing again."""
    run = _copy(mined_run, tmp_path / "run")
    times, budget_s, slow_s = tmp_path / "times.json", 30.0, 4.0
    env = _hooked_env(DOMAIN_EMBED_TEST_SLOW_STEP_S=str(slow_s), DOMAIN_EMBED_TEST_TIMES=str(times))
    over = ["train.max_steps=-1", "train.epochs=2", "train.val_every_n_steps=2", f"train.budget_minutes={budget_s / 60}"]
    p = _train(run, *over, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    kept = json.loads((run / "train" / "checkpoints" / "budget.json").read_text())
    summary = json.loads((run / "train" / "summary.json").read_text())
    # the probe's plan fitted every step planned (they are fast); only the slowdown made them not fit
    assert kept["capped"] is True and kept["steps"] == kept["planned_steps"] > 8, kept
    stopped = kept["stopped_at"]
    assert 1 <= stopped < kept["steps"] and summary["steps"] == stopped and summary["budget"] == kept, (kept, summary)
    assert f"train.budget_minutes={budget_s / 60:g} spent: stopped after step {stopped} of the {kept['steps']}" in p.stderr
    t = json.loads(times.read_text())
    # from fit's start to the worker's end (the last validation, the base mix, the model written): within
    # the budget and one slowed step, with room for writing the model
    assert t["end"] - t["fit_start"] <= budget_s + slow_s + 10, t
    rows = list(read_jsonl(run / "train" / "metrics.jsonl"))
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, stopped + 1))
    assert [r["step"] for r in rows if "val_ndcg@10" in r][-1] == stopped  # the step it ends on is validated
    # a rerun resumes to the step the budget ended on, not to the plan's last
    p = _train(run, *over, "train.base_mix=1")
    assert p.returncode == 0, p.stderr[-3000:]
    again = json.loads((run / "train" / "summary.json").read_text())
    assert again["resumed"] is True and again["steps"] == stopped, again
    assert [r["step"] for r in read_jsonl(run / "train" / "metrics.jsonl") if "loss" in r] == steps


def test_steps_within_the_budget_count_the_validations():
    from domain_embed.train.progress import StepTiming, steps_within

    t = StepTiming(collate_s=0.5, forward_s=4.0, backward_s=5.5, tokens=1)
    one = t.step_s * 1.03
    # no validation: as many whole steps as fit, never more than planned, never fewer than 1
    assert steps_within(10 * one + 0.5, 100, 1, t, 0, 0, 0.0, 1) == 10
    assert steps_within(10 * one, 4, 1, t, 0, 0, 0.0, 1) == 4
    assert steps_within(0.001, 100, 1, t, 0, 0, 0.0, 1) == 1
    # validation of 100 texts at 0.1 s: one at the start and one at the last step (10 s each) and one
    # every 5 steps (2 s a step)
    assert steps_within(20 + 10 * (one + 2) + 0.5, 100, 1, t, 5, 100, 0.1, 1) == 10
    assert steps_within(20 + 10 * (one + 2) - 0.5, 100, 1, t, 5, 100, 0.1, 1) == 9
    # gradient accumulation makes an optimizer step that many micro-batches long
    assert steps_within(10 * 2 * one + 0.5, 100, 2, t, 0, 0, 0.0, 1) == 10


def test_validations_planned_count_the_last_step_when_the_cadence_misses_it():
    from domain_embed.train.worker import validations_planned

    assert validations_planned(20, 25, False, 0) == 1    # the base only: no trained step to choose between
    assert validations_planned(50, 25, False, 0) == 3    # the base, 25 and 50 (the cadence ends on it)
    assert validations_planned(31, 25, False, 0) == 3    # the base, 25 and 31
    assert validations_planned(31, 25, True, 25) == 1    # resumed at 25: only 31 is left
    assert validations_planned(31, 0, False, 0) == 0     # validation off


def test_budget_auto_is_a_cpu_cap_and_bad_values_are_named():
    from domain_embed.errors import UserError
    from domain_embed.train.worker import CPU_BUDGET_MINUTES, budget_minutes

    assert budget_minutes("auto", on_cpu=True) == CPU_BUDGET_MINUTES > 0
    assert budget_minutes("auto", on_cpu=False) == 0.0          # a GPU trains the planned epochs
    assert budget_minutes(12, on_cpu=False) == 12.0 and budget_minutes("0", on_cpu=True) == 0.0
    with pytest.raises(UserError, match=r"train.budget_minutes='soon' is not a number of minutes or 'auto'"):
        budget_minutes("soon", on_cpu=True)


def test_base_mix_ships_the_interpolated_weights_without_training_again(trained, minilm_path, tmp_path):
    """On a finished run, train.base_mix=1 and then the default each resume it (no step trained again):
    the first ships the weights as trained, the second, tensor by tensor, a*tuned + (1-a)*base with
    the default share a -- which is what the default run shipped."""
    from safetensors.numpy import load_file

    run = _copy(trained, tmp_path / "run")
    first = json.loads((trained / "train" / "summary.json").read_text())
    assert first["best_step"] in (4, 6) and first["best_val_ndcg@10"] is not None
    default_alpha = float(first["base_mix"]["alpha"])   # the config's default, whatever it is today
    assert 0 < default_alpha < 1
    shipped = {}
    for alpha in ("1", str(default_alpha)):
        p = _train(run, f"train.base_mix={alpha}")
        assert p.returncode == 0, p.stderr[-3000:]
        summary = json.loads((run / "train" / "summary.json").read_text())
        assert summary["resumed"] and summary["steps"] == 6
        steps = [r["step"] for r in read_jsonl(run / "train" / "metrics.jsonl") if "loss" in r]
        assert steps == [1, 2, 3, 4, 5, 6], "mixing must not train again"
        assert summary["base_mix"]["alpha"] == float(alpha)
        # last.ckpt at step 6 was written before step 6's validation: the best must come from the log,
        # and that validation, logged by the first run, is not run again
        assert [r["step"] for r in read_jsonl(run / "train" / "metrics.jsonl") if "val_ndcg@10" in r] == [0, 4, 6]
        assert (summary["best_val_ndcg@10"], summary["best_step"]) == (first["best_val_ndcg@10"], first["best_step"])
        shipped[alpha] = _weights(run / "train" / "model")
    tuned, mixed, a = shipped["1"], shipped[str(default_alpha)], default_alpha
    base = {k.split(".", 1)[1] if k.startswith(("bert.", "model.")) else k: v
            for k, v in load_file(str(Path(minilm_path) / "model.safetensors")).items()}
    floats = [k for k in tuned if np.issubdtype(tuned[k].dtype, np.floating) and k in base]
    assert summary["base_mix"]["mixed"] >= len(floats) > 50
    worst = max(float(np.abs(mixed[k] - (a * tuned[k] + (1 - a) * base[k])).max()) for k in floats)
    assert worst < 1e-6, f"shipped weights are not {a}*tuned + {1 - a:g}*base (off by {worst})"
    moved = max(float(np.abs(mixed[k] - tuned[k]).max()) for k in floats)
    assert moved > 1e-5, "the tuned weights did not move toward the base"
    default = _weights(trained / "train" / "model")
    assert max(float(np.abs(default[k] - mixed[k]).max()) for k in floats) < 1e-6


def test_force_trains_again_except_when_torchrun_restarts_the_same_forced_command(trained, tmp_path):
    """`train --force` deletes the checkpoints and trains from step 0. torchrun restarts its workers (a rank
    failed, a node was replaced) by running the same command again with TORCHELASTIC_RESTART_COUNT > 0
    (tests/train/test_train_launch.py sees it set): --force then resumes instead, or every restart would
    throw away the forced run's progress and train from step 0 again."""
    run = _copy(trained, tmp_path / "run")
    p = _train(run, "--force", env=_env(TORCHELASTIC_RESTART_COUNT="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["resumed"] is True and summary["steps"] == 6
    assert [r["step"] for r in read_jsonl(run / "train" / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4, 5, 6]
    p = _train(run, "--force", env=_env(TORCHELASTIC_RESTART_COUNT="0"))
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["resumed"] is False and summary["steps"] == 6


def test_a_run_shorter_than_one_validation_cadence_ships_its_last_step_without_encoding_the_corpus_again(
        mined_run, tmp_path):
    """2 steps, validation every 4: only the base is validated (step 0). A pass at step 2 could not change
    what ships (no other trained step was scored), so it is not run: the demo spent 3.5 min on it."""
    run = _copy(mined_run, tmp_path / "run")
    p = _train(run, "train.max_steps=2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert [r["step"] for r in read_jsonl(run / "train" / "metrics.jsonl") if "val_ndcg@10" in r] == [0]
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["best_step"] is None and summary["base_val_ndcg@10"] is not None
    from domain_embed.train.stage import validation_line

    assert "the last step is shipped unvalidated" in validation_line(summary)


def test_a_finished_run_checkpoints_its_last_step_off_the_cadence(mined_run, tmp_path):
    """5 steps with a checkpoint every 2: the finished run still saves step 5, so changing only what is
    shipped (train.base_mix) resumes at 5 and trains and validates nothing again."""
    import torch

    run = _copy(mined_run, tmp_path / "run")
    p = _train(run, "train.max_steps=5")
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = torch.load(run / "train" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert int(ckpt["global_step"]) == 5
    p = _train(run, "train.max_steps=5", "train.base_mix=1")
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["resumed"] and summary["steps"] == 5 and summary["base_mix"]["alpha"] == 1.0
    rows = list(read_jsonl(run / "train" / "metrics.jsonl"))
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5], "the rerun trained again"
    assert [r["step"] for r in rows if "val_ndcg@10" in r] == [0, 4, 5], "the rerun validated again"


@pytest.mark.parametrize("override, says", [
    ("train.base_mix=1.5", "train.base_mix=1.5 is outside (0, 1]"),
    ("train.distill_base=-0.5", "train.distill_base=-0.5 is negative"),
    ("train.teacher.path=/nonexistent/teacher", "train.teacher.path=/nonexistent/teacher is not a model folder"),
    ("train.teacher.temperature=0", "give a weight >= 0 (1 = as much as the contrastive loss) and a temperature > 0"),
])
def test_bad_train_weights_are_refused_before_training(mined_run, trained, tmp_path, override, says):
    run = _copy(mined_run, tmp_path / "run")
    teacher = [f"train.teacher.path={trained / 'train' / 'model'}"] if override.endswith("temperature=0") else []
    p = _train(run, *teacher, override)
    assert p.returncode != 0
    assert says in p.stderr, p.stderr[-2000:]
    assert not (run / "train" / "checkpoints").exists()


def test_the_base_validation_reads_stored_passage_vectors_and_scores_what_encoding_scores(mined_run, tmp_path):
    """Synthesis's round trip leaves the base's vector of every chunk in the run's embedding store, so the
    step-0 validation reads its passages instead of encoding them again. It scores what encoding them
    scores; the stored vectors are really the ones used (stored under the wrong texts, the score moves);
    and a store without them is encoded as before."""
    import shutil

    from domain_embed.embed_store import EmbeddingStore
    from domain_embed.encoding import Encoder
    from domain_embed.train.worker import load_training_data

    def run_with(name: str, fill) -> tuple[float, bool]:
        run = _copy(mined_run, tmp_path / name)
        shutil.rmtree(run / "embeddings", ignore_errors=True)
        conf = load_config(run, [], save=False)
        spec = EncodingSpec.from_config(conf)
        if fill is not None:
            texts = load_training_data(run, conf).val.corpus_texts
            fill(EmbeddingStore.for_run(run), Encoder(spec, device="cpu"), texts)
        p = _train(run, "train.max_steps=1")
        assert p.returncode == 0, p.stderr[-3000:]
        summary = json.loads((run / "train" / "summary.json").read_text())
        return summary["base_val_ndcg@10"], summary["base_val_passages_stored"]

    class Misfiled:
        """The real encoder, its vectors stored under the texts in reverse (a fault, to show they are read)."""

        def __init__(self, enc):
            self.enc, self.spec, self.model_path = enc, enc.spec, enc.model_path

        def encode(self, texts, input_type, callback=None):
            return self.enc.encode(list(texts)[::-1], input_type)

    encoded, stored_a = run_with("encoded", None)
    from_store, stored_b = run_with("stored", lambda store, enc, texts: store.embed(texts, "passage", enc))
    misfiled, stored_c = run_with("misfiled", lambda store, enc, texts: store.embed(texts, "passage", Misfiled(enc),
                                                                                      shard_rows=len(texts)))
    assert (stored_a, stored_b, stored_c) == (False, True, True)
    assert from_store == pytest.approx(encoded, abs=1e-4)
    assert misfiled != pytest.approx(encoded, abs=1e-3)


def test_a_teacher_embeds_the_planned_rows_once_and_adds_its_kl_to_the_loss(mined_run, trained, minilm_path,
                                                                             tmp_path):
    """train.teacher: the teacher (here the tuned model of the ``trained`` run, a real model that ranks
    differently from the base) embeds every planned query and passage into the run's store before the first
    step, and step 1's loss is the contrastive loss of the same weights and batch plus a positive KL term."""
    from domain_embed.train.teacher import teacher_spec

    teacher = trained / "train" / "model"
    losses = {}
    for name, over in (("plain", []), ("teacher", [f"train.teacher.path={teacher}"])):
        run = _copy(mined_run, tmp_path / name)
        before = set(os.listdir(run / "embeddings")) if (run / "embeddings").is_dir() else set()
        p = _train(run, "train.max_steps=2", "train.val_every_n_steps=0", *over)
        assert p.returncode == 0, p.stderr[-3000:]
        losses[name] = [r["loss"] for r in read_jsonl(run / "train" / "metrics.jsonl") if "loss" in r]
        added = set(os.listdir(run / "embeddings")) - before if (run / "embeddings").is_dir() else set()
        assert len(added) == (2 if over else 0), (name, added)  # the teacher's query and passage sets
    assert losses["teacher"][0] > losses["plain"][0] + 1e-4, losses
    # a sentence-transformers folder without a domain-embed spec: its own pooling and width, no prompts
    spec = EncodingSpec.from_config(load_config(mined_run, [], save=False))
    ts = teacher_spec(Path(minilm_path), spec)
    assert (ts.pooling, ts.dim, ts.query_prefix, ts.max_passage_length) == ("mean", 384, "", spec.max_passage_length)
    assert teacher_spec(teacher, spec).model_path == str(teacher)
