"""The training process: ``python -m domain_embed.train.worker <run_dir>``.

The ``train`` stage starts it as a child process so that Lightning's DDP launcher can re-run this
same command for the other local ranks, and torchrun (multi-node) environment variables pass
straight through. It reads ``train/run_config.yaml`` that the stage wrote, through the config schema
(:func:`load_run_config`): a stale or edited file fails naming the file and the key.

Exit status: 0 trained (``train/model`` and ``summary.json`` written); 2 bad input (the message in
``train/.error``); 128+signal stopped by SIGTERM/SIGINT after saving ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..schema import RunConfig, TrainConfig, load_file, plain

RUN_CONFIG = "run_config.yaml"


def error_file(tdir: Path, env: Any = None) -> Path:
    """Where this process's worker leaves its one-line user error for the stage: ``train/.error``, or
    ``train/.error.<rank>`` for a torchrun rank other than 0. Every rank's stage clears its file before it
    starts the worker, and the ranks start at different moments (on other nodes): with one shared file, a late
    rank deleted the message an early one had just written, and that rank exited 1 with "training process
    exited with code 2" instead of 2 with the message."""
    import os

    rank = str((os.environ if env is None else env).get("RANK", "0")).strip()
    return tdir / (".error" if rank in ("", "0") else f".error.{rank}")


def load_run_config(run_dir: Path) -> tuple[RunConfig, bool]:
    """``train/run_config.yaml`` (the stage's resolved config) as the typed, validated view, and its
    ``_quiet`` flag."""
    conf, flags = load_file(run_dir / "train" / RUN_CONFIG, flags=("_quiet",),
                            fix="rerun `domain-embed train`, which writes it afresh from the run's config")
    return conf, bool(flags["_quiet"])


def resolve_precision(p: Any) -> str:
    """``train.precision`` (``auto`` or a Lightning name, kept as given: ``16`` may arrive as an int)."""
    import torch

    if str(p) != "auto":
        return str(p)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _devices(v: Any) -> Any:
    """``train.devices`` (``auto | N | "0,1" | [0, 1]``, kept as given) as Lightning takes it."""
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return v


def _say(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    """Silence what a user cannot act on: Lightning's tips and device banners, deprecation and
    'few dataloader workers' warnings, transformers' weight-loading bars. Errors still show."""
    import logging
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.distributed",
                 "lightning.pytorch.utilities.distributed", "lightning.pytorch.trainer.connectors.signal_connector"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*litlogger.*|.*litmodels.*|.*LitLogger.*")
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
    warnings.filterwarnings("ignore", message=r".*predefined length.*|.*IterableDataset.*")
    try:
        from lightning.fabric.utilities.warnings import PossibleUserWarning

        warnings.filterwarnings("ignore", category=PossibleUserWarning)
    except ImportError:  # pragma: no cover
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


# ---------------------------------------------------------------- inputs
@dataclass
class TrainingData:
    texts: list[str]           # split/train_corpus.jsonl, row = passage id used by the plan
    examples: list             # batching.Example
    dropped: int               # mined queries without a positive in the corpus
    val: Any                   # evaluate.retrieval.BeirDataset (corpus bounded) or None
    val_counts: dict[str, int]


def load_training_data(run_dir: Path, conf: RunConfig) -> TrainingData:
    from ..errors import UserError
    from ..beir import load_beir
    from ..rundir import read_jsonl
    from .batching import load_examples
    from .validation import bounded_validation

    tc = conf.train
    corpus = list(read_jsonl(run_dir / "split" / "train_corpus.jsonl"))
    mined = list(read_jsonl(run_dir / "mine" / "train.jsonl"))
    examples, dropped = load_examples(mined, [c["id"] for c in corpus])
    if not examples:
        raise UserError("mine/train.jsonl has no query with a positive in split/train_corpus.jsonl; rerun mine")
    val, counts = None, {}
    vdir = run_dir / "split" / "val_beir"
    if vdir.is_dir() and tc.val_every_n_steps > 0:
        try:
            full = load_beir(vdir, "dev", "val")
        except UserError as exc:
            _say(f"no validation: {exc}")
        else:
            # mining covers training queries today; should it mine validation queries, use their negatives
            val_q = set(full.query_ids)
            negs = [n["id"] for r in mined if str(r.get("query_id")) in val_q for n in r.get("neg", [])]
            # a passage's document, by its title (split/val_beir rows carry the document title)
            docs = [str(r.get("title") or "") for r in read_jsonl(vdir / "corpus.jsonl")]
            val, counts = bounded_validation(full, tc.val_corpus_size, conf.seed, negs,
                                             documents=docs if len(docs) == len(full.corpus_ids) else None)
    return TrainingData([c["text"] for c in corpus], examples, dropped, val, counts)


# ---------------------------------------------------------------- the trainer
def build_trainer(tc: TrainConfig, callbacks: list, has_val: bool, root_dir: Path):
    import lightning as L

    strategy: Any = tc.strategy.value
    if strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=False)
    return L.Trainer(
        accelerator=tc.accelerator.value, devices=_devices(tc.devices), num_nodes=tc.num_nodes, strategy=strategy,
        precision=resolve_precision(tc.precision), accumulate_grad_batches=tc.grad_accum,
        gradient_clip_val=tc.gradient_clip if tc.gradient_clip > 0 else None,
        max_epochs=-1, max_steps=1, logger=False, callbacks=callbacks, enable_checkpointing=False,
        # our own progress (train.progress): Lightning's bar has no ETA across validations or a non-TTY mode
        enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False, default_root_dir=str(root_dir),
        val_check_interval=(tc.val_every_n_steps * tc.grad_accum) if has_val else None,
        check_val_every_n_epoch=None, limit_val_batches=1 if has_val else 0,
    )


# ---------------------------------------------------------------- resuming
def resume_fingerprint(run_dir: Path, conf: RunConfig, world: int) -> str:
    """A checkpoint is resumed only if it came from this very config, these inputs and world size."""
    from ..rundir import sha256_path

    # base_mix only changes what is written after training: a new value resumes the finished run
    train = {k: v for k, v in plain(conf.train).items() if k != "base_mix"}
    blob = json.dumps({"cfg": train, "model": plain(conf.model),
                       "seed": conf.seed, "mined": sha256_path(run_dir / "mine" / "train.jsonl"), "world": world},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_resume(tdir: Path, ck, fingerprint: str, is_global_zero: bool) -> tuple[bool, int]:
    """(True, its step) to resume from ``ck.last``. Otherwise the old checkpoints and log go; a resumed run
    drops what the stopped run logged after its checkpoint (it logs that again)."""
    import torch

    from ..rundir import atomic_write_json, atomic_write_jsonl, read_jsonl

    fp_file = tdir / "checkpoints" / "fingerprint.json"
    resume = ck.last.is_file() and fp_file.is_file() and json.loads(fp_file.read_text()).get("fingerprint") == fingerprint
    metrics_path = tdir / "metrics.jsonl"
    if not resume:
        if is_global_zero:
            for f in (ck.last, ck.best, metrics_path):
                f.unlink(missing_ok=True)
            atomic_write_json(fp_file, {"fingerprint": fingerprint})
        return False, 0
    step = int(torch.load(ck.last, map_location="cpu", weights_only=False)["global_step"])
    keep = [r for r in read_jsonl(metrics_path) if r["step"] <= step] if metrics_path.is_file() else []
    ck.seed_best(keep)  # on every rank: they must agree on whether a validation writes best.ckpt
    if not is_global_zero:  # every rank must know the step (they decide the same things from it)
        return True, step
    atomic_write_jsonl(metrics_path, keep)
    _say(f"resuming from {ck.last} at step {step}")
    return True, step


def owes_validation(tdir: Path, tc: TrainConfig, resume: bool, start_step: int, has_val: bool) -> bool:
    """A checkpoint at a validation step is written before that validation; if the stopped run did
    not log it, the resumed run must run it first."""
    from ..rundir import read_jsonl

    every = tc.val_every_n_steps
    if not (resume and has_val and every > 0 and start_step > 0 and start_step % every == 0):
        return False
    path = tdir / "metrics.jsonl"
    logged = {r["step"] for r in read_jsonl(path) if "val_ndcg@10" in r} if path.is_file() else set()
    return start_step not in logged


def needs_final_validation(tdir: Path, tc: TrainConfig, step: int, has_val: bool) -> bool:
    """Training ended on a step that Lightning's cadence does not validate (``train.val_every_n_steps``
    does not divide it), an earlier trained step was validated, and no earlier run of this one logged
    this step's validation (a finished run resumed to change ``train.base_mix``). Without this pass the
    steps after the last validation were never scored: best.ckpt from an earlier validation was shipped
    over them. When no trained step was validated (a run shorter than one cadence: 6 steps in the demo,
    17-18 on the Debian Reference), there is nothing to choose between: the last step is shipped either
    way, and the held-out evaluation scores it; the pass would only report a number, from a few validation
    queries, for minutes of encoding (the demo's 2,023 passages took 3.5 min on a slow day). Every rank
    reads the same log, written before this process started for the step in question, so they agree."""
    from ..rundir import read_jsonl

    every = tc.val_every_n_steps
    if not (has_val and every > 0 and step > 0 and step % every != 0):
        return False
    path = tdir / "metrics.jsonl"
    validated = {r.get("step") for r in read_jsonl(path) if "val_ndcg@10" in r} if path.is_file() else set()
    return step not in validated and any(s > 0 for s in validated)


def validations_planned(total_steps: int, every: int, resume: bool, start_step: int) -> int:
    """Validation passes still to run: the base's (step 0, unless resumed), one every ``every`` steps,
    and one at the last step when ``every`` does not divide it and an earlier step was validated on the
    cadence (see :func:`needs_final_validation`)."""
    if every <= 0:
        return 0
    return ((0 if resume else 1) + (total_steps // every - start_step // every)
            + (1 if total_steps % every and total_steps > start_step and total_steps > every else 0))


# ---------------------------------------------------------------- outputs
def write_outputs(run_dir: Path, conf: RunConfig, module, tokenizer, spec, ck, trainer, data: TrainingData,
                  total_steps: int, resumed: bool) -> dict[str, Any]:
    """Load the best validated weights (or keep the last), then write train/model with its model
    card and train/summary.json. Rank 0 only."""
    import torch

    from ..rundir import atomic_write_json, read_jsonl, sha256_path
    from .merge import check_alpha, mix_with_base
    from .model_dir import save_model_dir

    tdir, tc = run_dir / "train", conf.train
    if ck.best.is_file():
        module.load_state_dict(torch.load(ck.best, map_location="cpu", weights_only=False)["state_dict"])
    metrics_path = tdir / "metrics.jsonl"
    rows = list(read_jsonl(metrics_path)) if metrics_path.is_file() else []
    vals = [(r["step"], r["val_ndcg@10"]) for r in rows if "val_ndcg@10" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    summary = {
        "steps": int(trainer.global_step), "planned_steps": total_steps, "world_size": trainer.world_size,
        "train_queries": len(data.examples), "dropped_queries": data.dropped, "train_passages": len(data.texts),
        "val_queries": len(data.val.query_ids) if data.val else 0, **data.val_counts,
        "base_val_ndcg@10": next((v for s, v in vals if s == 0), None),
        "base_val_passages_stored": module.base_passages is not None, "best_val_ndcg@10": ck.best_score,
        "best_step": ck.best_step, "final_loss": losses[-1] if losses else None, "resumed": bool(resumed),
        "precision": resolve_precision(tc.precision),
        "early_stopped": bool(trainer.should_stop and trainer.global_step < total_steps),
        "budget": getattr(module, "budget", {}) or None,
    }
    # WiSE-FT: the shipped weights are alpha * tuned + (1 - alpha) * base (train.base_mix; 1 = as trained)
    model = module.model.merge_and_unload() if hasattr(module.model, "merge_and_unload") else module.model
    summary["base_mix"] = mix_with_base(model, spec.model_path, check_alpha(tc.base_mix))
    card = {**summary, "train": plain(tc), "base_model_name": conf.model.name,
            "base_model_path": spec.model_path, "served_name": conf.model.served_name,
            "train_sha": sha256_path(run_dir / "mine" / "train.jsonl"), "val_curve": vals}
    save_model_dir(model, tokenizer, spec, tdir / "model", card)
    atomic_write_json(tdir / "summary.json", summary)
    return summary


# ---------------------------------------------------------------- main
def main(run_dir: Path) -> int:
    quiet_libraries()
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping
    from transformers import AutoTokenizer

    from ..config import EncodingSpec
    from ..rundir import AppendLog
    from .batching import PlannedBatches, fit_plan, make_collate
    from .bi_encoder import BiEncoder
    from .checkpointing import AtomicCheckpoints
    from .progress import TrainProgress
    from .stopping import BudgetDeadline, StopOnSignal

    tdir = run_dir / "train"
    conf, quiet = load_run_config(run_dir)
    tc = conf.train
    ck = AtomicCheckpoints(tdir / "checkpoints", tc.checkpoint_every_n_steps)
    stop = StopOnSignal(ck)
    stop.install()  # from here on a signal is a request to stop, honoured at the next safe point
    spec = EncodingSpec.from_config(conf)
    seed = conf.seed
    L.seed_everything(seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")

    data = load_training_data(run_dir, conf)
    if data.val is not None:
        ck.val_every = tc.val_every_n_steps
    show = not quiet  # (and rank 0: TrainProgress and the estimate check the rank themselves)
    bar = TrainProgress()
    deadline = BudgetDeadline()  # armed below when train.budget_minutes applies
    callbacks: list = [ck, stop, deadline, *([bar] if show else [])]
    if data.val is not None and tc.early_stopping_patience > 0:
        callbacks.append(EarlyStopping("val_ndcg@10", mode="max", patience=tc.early_stopping_patience,
                                       check_on_train_epoch_end=False))
    trainer = build_trainer(tc, callbacks, data.val is not None, tdir)
    world, accum = trainer.world_size, tc.grad_accum
    plan = fit_plan(data.examples, len(data.texts), tc.batch_size, world, tc.num_negatives, seed,
                    log=lambda m: print(m, file=sys.stderr))
    total_steps = tc.max_steps if tc.max_steps > 0 else max(1, plan.batches_in(tc.epochs) // accum)
    trainer.fit_loop.epoch_loop.max_steps = total_steps  # known only once the world size is
    bar.total_steps = total_steps
    show = show and trainer.is_global_zero

    tokenizer = AutoTokenizer.from_pretrained(spec.model_path, trust_remote_code=spec.trust_remote_code)
    collate = make_collate(tokenizer, spec, train_passage_length(tc, spec))
    resume, start_step = prepare_resume(tdir, ck, resume_fingerprint(run_dir, conf, world), trainer.is_global_zero)
    log = AppendLog(tdir / "metrics.jsonl") if trainer.is_global_zero else None
    module = BiEncoder(spec, tc, tokenizer, total_steps, val=data.val, metrics_log=log)
    module.stop_check = lambda: stop.check(int(trainer.global_step))
    module.owes_validation = owes_validation(tdir, tc, resume, start_step, data.val is not None)
    module.show_progress = show
    if data.val is not None and world == 1 and not resume:
        from ..embed_store import EmbeddingStore

        module.base_passages = EmbeddingStore.for_run(run_dir).lookup(data.val.corpus_texts, "passage", spec)
    if data.val is not None and show:
        c = data.val_counts
        _say(f"validation: {len(data.val.query_ids)} queries over {c['val_corpus']} passages "
             f"({c['val_positives']} positives and their documents + seeded distractors, of {c['val_corpus_full']}; "
             f"train.val_corpus_size)" + ("; the base's pass (step 0) reads the passages' vectors from the run's "
                                          "embedding store" if module.base_passages is not None else ""))
    on_cpu = type(trainer.accelerator).__name__ == "CPUAccelerator"
    total_steps, budget = fit_budget(tdir, tc, module, plan, data, collate, total_steps, accum, world, resume,
                                     start_step, trainer.is_global_zero, on_cpu)
    trainer.fit_loop.epoch_loop.max_steps = module.total_steps = bar.total_steps = total_steps
    if show:
        print_estimate(module, plan, data, collate, total_steps, accum, world, resume, start_step,
                       timing=budget.get("_timing"), per_text=budget.get("_per_text"))
    module.budget = {k: v for k, v in budget.items() if not k.startswith("_")}
    if budget.get("stopped_at"):
        # an earlier run of this plan spent the budget there: the resumed run ends there too, with the
        # learning-rate schedule of the plan (module.total_steps), so it reaches the same weights
        trainer.fit_loop.epoch_loop.max_steps = bar.total_steps = int(budget["stopped_at"])
    elif budget:
        arm_deadline(deadline, tdir, module, bar, budget, data, trainer.is_global_zero)
    stop.check(None)
    # rank and world size are read when iteration starts: under DDP they exist only once Lightning launched the ranks
    if tc.teacher.path:
        from ..embed_store import EmbeddingStore
        from .teacher import teacher_path, teacher_spec, teacher_vectors

        tspec = teacher_spec(teacher_path(tc.teacher.path), spec)
        module.teacher = teacher_vectors(plan, data.texts, total_steps * accum, tspec, conf.model,
                                         store=EmbeddingStore.for_run(run_dir), log=_say if show else lambda m: None)
    train_ds = PlannedBatches(plan, data.texts, collate, 0, world, total_steps * accum, lambda: module.resume_batch,
                              rank_world=lambda: (trainer.global_rank, trainer.world_size))
    # Their own generators: a DataLoader iterator otherwise draws its seed from the global torch RNG,
    # which dropout uses too, so a run resumed from a checkpoint (RNG restored, then a new iterator)
    # would train on a shifted dropout stream and drift from the uninterrupted run.
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=None, num_workers=0,
                                           generator=torch.Generator().manual_seed(seed))
    val_dl = (torch.utils.data.DataLoader([0], batch_size=1, generator=torch.Generator().manual_seed(seed))
              if data.val is not None else None)
    try:
        trainer.fit(module, train_dataloaders=train_dl, val_dataloaders=val_dl,
                    ckpt_path=str(ck.last) if resume else None)
        if module.owes_validation or needs_final_validation(tdir, tc, int(trainer.global_step), data.val is not None):
            # resumed at the last step: fit had nothing left to run, not even the validation it owed;
            # or the last step is not a multiple of train.val_every_n_steps, so Lightning never scored it
            trainer.validate(module, dataloaders=val_dl, verbose=False)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            write_outputs(run_dir, conf, module, tokenizer, spec, ck, trainer, data, total_steps, resume)
        trainer.strategy.barrier()
    finally:
        if log is not None:
            log.close()
    return 0


def train_passage_length(tc: TrainConfig, spec) -> int:
    """Passage token limit while training: ``train.max_passage_length`` if set and shorter, else the
    spec's (serving and evaluation always use the spec's)."""
    v = tc.max_passage_length or 0
    return min(v, spec.max_passage_length) if v > 0 else spec.max_passage_length


def probe(module, plan, data: TrainingData, collate, world: int):
    """(one micro-batch's timing, seconds per validation passage): a short timed probe, weights untouched."""
    from .batching import PlannedBatches
    from .progress import probe_step, probe_validation

    batches = PlannedBatches(plan, data.texts, collate, 0, world, 2, lambda: 0)
    timing = probe_step(module, batches, n=2, rows=max(1, (plan.global_batch // world) // 4))
    per_text = probe_validation(module, data.val.corpus_texts) if data.val is not None else 0.0
    return timing, per_text


CPU_BUDGET_MINUTES = 30.0  # train.budget_minutes=auto on CPU


def budget_minutes(value, on_cpu: bool) -> float:
    """``train.budget_minutes`` as minutes (0 = off): a number, or ``auto``."""
    if value is None or str(value).strip().lower() == "auto":
        return CPU_BUDGET_MINUTES if on_cpu else 0.0
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        from ..errors import UserError

        raise UserError(f"train.budget_minutes={value!r} is not a number of minutes or 'auto'; "
                        f"set e.g. train.budget_minutes=30, 0 (off) or auto") from None


def fit_budget(tdir: Path, tc: TrainConfig, module, plan, data: TrainingData, collate, total_steps: int, accum: int,
               world: int, resume: bool, start_step: int, is_global_zero: bool,
               on_cpu: bool = True) -> tuple[int, dict[str, Any]]:
    """``train.budget_minutes``: when the planned steps would take longer here than the budget (a timed
    probe decides), train fewer steps, with the learning-rate schedule planned for them. The decision
    is kept in checkpoints/budget.json, so a resumed run trains to the same step count. ``auto``: 30
    minutes on CPU, off on a GPU (where the planned epochs are what a platform team asked for). Off when
    0, when ``train.max_steps`` is set, and with more than one process (every rank must agree; set
    ``train.max_steps`` there)."""
    from ..rundir import atomic_write_json
    from .progress import format_duration, steps_within

    budget_min = budget_minutes(tc.budget_minutes, on_cpu)
    path = tdir / "checkpoints" / "budget.json"
    if budget_min <= 0 or tc.max_steps > 0 or world > 1:
        return total_steps, {}
    if resume and path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("planned_steps") == total_steps and kept.get("budget_minutes") == budget_min:
            return int(kept["steps"]), kept
    timing, per_text = probe(module, plan, data, collate, world)
    val_texts = len(data.val.corpus_texts) + len(data.val.query_ids) if data.val is not None else 0
    every = tc.val_every_n_steps if data.val is not None else 0
    steps = steps_within(budget_min * 60, total_steps, accum, timing, every, val_texts, per_text, world,
                         base_free=module.base_passages is not None)
    if resume and steps < start_step:  # a checkpoint from before the budget existed: never go backwards
        steps = total_steps
    info = {"budget_minutes": budget_min, "planned_steps": total_steps, "steps": steps,
            "capped": steps < total_steps, "probe_step_s": round(timing.step_s * accum * 1.03, 3),
            "_timing": timing, "_per_text": per_text}
    if is_global_zero:
        atomic_write_json(path, {k: v for k, v in info.items() if not k.startswith("_")})
        if steps < total_steps:
            epochs = steps * accum / max(1, plan.batches_in(1))
            _say(f"train.budget_minutes={budget_min:g}: the {total_steps} planned steps would take about "
                 f"{format_duration(total_steps * info['probe_step_s'])} here; training {steps} steps "
                 f"({epochs:.2f} epochs, learning-rate schedule planned for them) to fit. Raise "
                 f"train.budget_minutes (0 = off) or set train.max_steps to train longer.")
    return steps, info


def arm_deadline(deadline, tdir: Path, module, bar, budget: dict[str, Any], data: TrainingData,
                 is_global_zero: bool) -> None:
    """``train.budget_minutes`` holds: the steps planned from the probe stop short at the deadline when
    they run slower than the probe (see :class:`~.stopping.BudgetDeadline`). The step it stops at is kept
    in checkpoints/budget.json (``stopped_at``), so a rerun resumes to the same step and weights."""
    from ..rundir import atomic_write_json
    from .progress import format_duration

    per_text = budget.get("_per_text") or 0.0
    val_s = (len(data.val.corpus_texts) + len(data.val.query_ids)) * per_text if data.val is not None else 0.0
    probe_s = float(budget.get("probe_step_s") or 0.0)
    minutes = float(budget["budget_minutes"])

    def spent(step: int, seconds_a_step: float) -> None:
        module.budget = {**module.budget, "stopped_at": step, "capped": True}
        bar.total_steps = step
        if is_global_zero:
            atomic_write_json(tdir / "checkpoints" / "budget.json", module.budget)
            planned = int(budget["steps"])
            _say(f"train.budget_minutes={minutes:g} spent: stopped after step {step} of the {planned} planned "
                 f"(a step took {format_duration(seconds_a_step)} on average here, against the probe's "
                 f"{format_duration(probe_s)}); training ends there as a run planned for {step} steps would, and "
                 f"a rerun resumes to the same step. Raise train.budget_minutes (0 = off) or set train.max_steps "
                 f"to train longer.")

    deadline.arm(minutes * 60, probe_s, val_s, spent)


def print_estimate(module, plan, data: TrainingData, collate, total_steps: int, accum: int, world: int,
                   resume: bool, start_step: int, timing=None, per_text=None) -> None:
    """Before training: what it will do and how long it is likely to take here (a timed probe)."""
    from .progress import estimate_line

    steps = max(0, total_steps - start_step)
    if timing is None:
        timing, per_text = probe(module, plan, data, collate, world)
    validations, val_texts = 0, 0
    if data.val is not None:
        validations = validations_planned(total_steps, module.tcfg.val_every_n_steps, resume, start_step)
        if module.base_passages is not None and validations:
            validations -= 1  # the base's pass encodes only the queries
        val_texts = len(data.val.corpus_texts) + len(data.val.query_ids)
    per_device = plan.global_batch // world
    _say(f"plan: {len(data.examples)} queries, {per_device} a micro-batch with {plan.k} negatives each, "
         f"{plan.batches_in(1)} batches an epoch")
    _say(estimate_line(steps, accum, timing, validations, val_texts, per_text, world))


if __name__ == "__main__":
    from ..errors import UserError
    from .stopping import TrainingStopped

    try:
        sys.exit(main(Path(sys.argv[1]).resolve()))
    except UserError as exc:
        # the stage re-raises this one line in the parent process
        from ..rundir import atomic_write_text

        atomic_write_text(error_file(Path(sys.argv[1]) / "train"), str(exc))
        sys.exit(exc.exit_code)
    except TrainingStopped as exc:
        ckpt = Path(sys.argv[1]) / "train" / "checkpoints" / "last.ckpt"
        saved = f"checkpoint {ckpt}" if ckpt.is_file() else "no checkpoint yet"
        _say(f"{exc}; {saved}; rerun `domain-embed train` to resume")
        sys.exit(exc.exit_code)
