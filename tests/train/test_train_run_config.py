"""The training worker reads train/run_config.yaml through the config schema: typed values, and a
stale or edited file refused in one line naming the file and the key (exit 2, the line in train/.error)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from domain_embed.config import load_config
from domain_embed.errors import UserError
from domain_embed.schema import Accelerator, RunConfig
from domain_embed.train.worker import load_run_config


def _write(run: Path, edit=None, quiet: bool = True) -> Path:
    """train/run_config.yaml as the train stage writes it (the resolved config plus its _quiet flag)."""
    cfg = OmegaConf.to_container(load_config(None, ["train.accelerator=cpu", "train.max_steps=3"], save=False),
                                 resolve=True)
    cfg["_quiet"] = quiet
    if edit:
        edit(cfg)
    f = run / "train" / "run_config.yaml"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return f


def test_the_stages_file_reads_back_typed(tmp_path):
    _write(tmp_path)
    conf, quiet = load_run_config(tmp_path)
    assert isinstance(conf, RunConfig) and quiet is True
    assert conf.train.accelerator is Accelerator.cpu and conf.train.max_steps == 3
    assert type(conf.train.learning_rate) is float and conf.train.devices == "auto"  # a union key, as given


@pytest.mark.parametrize("edit, key, says", [
    (lambda c: c["train"].update(epochs="lots"), "train.epochs", "not a valid int"),
    (lambda c: c["train"].update(lrr=1), "train.lrr", "not a config key"),
    (lambda c: c["train"].update(strategy="horovod"), "train.strategy", "not one of auto, ddp, fsdp"),
])
def test_a_bad_or_stale_file_is_refused_naming_file_and_key(tmp_path, edit, key, says):
    f = _write(tmp_path, edit)
    with pytest.raises(UserError) as err:
        load_run_config(tmp_path)
    msg = str(err.value)
    assert str(f) in msg and key in msg and says in msg and "rerun" in msg, msg


def test_a_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(UserError, match="run_config.yaml is missing"):
        load_run_config(tmp_path)
    f = tmp_path / "train" / "run_config.yaml"
    f.parent.mkdir(parents=True)
    f.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match=r"run_config.yaml is not a valid config file"):
        load_run_config(tmp_path)


def test_the_worker_process_exits_2_with_the_message_in_train_error(tmp_path):
    """The real worker command the train stage starts: it refuses the file before loading any model."""
    f = _write(tmp_path, lambda c: c["train"].update(batch_size=0.5))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "domain_embed.train.worker", str(tmp_path)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    msg = (tmp_path / "train" / ".error").read_text()
    assert str(f) in msg and "train.batch_size=0.5" in msg, msg


def test_a_torchrun_rank_keeps_its_error_message_to_itself(tmp_path):
    """Every rank of a multi-node run starts the same stage in the same run directory, and each cleared
    train/.error before starting its worker: a rank on a later node deleted the message rank 0's worker had
    just written, so rank 0 reported "training process exited with code 2" (exit 1) instead of the message
    (exit 2). Each rank now has its own file; rank 0's stays where it was."""
    tdir = tmp_path / "train"
    _write(tmp_path, lambda c: c["train"].update(batch_size=0.5))
    (tdir / ".error").write_text("rank 0's message")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RANK": "1", "WORLD_SIZE": "2"}
    p = subprocess.run([sys.executable, "-m", "domain_embed.train.worker", str(tmp_path)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert (tdir / ".error").read_text() == "rank 0's message"
    assert "train.batch_size=0.5" in (tdir / ".error.1").read_text()

    from domain_embed.train.worker import error_file

    assert error_file(tdir, {}) == tdir / ".error" == error_file(tdir, {"RANK": "0"})
    assert error_file(tdir, {"RANK": "5"}) == tdir / ".error.5"
