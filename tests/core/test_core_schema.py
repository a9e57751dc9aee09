"""The typed config schema: bad overrides fail at the command line naming the key, the value and the
type; every key of every group option has a typed, documented field; validation changes no value."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from domain_embed.config import _compose, config_hash, load_config
from domain_embed.errors import UserError
from domain_embed.schema import RunConfig, find_field, iter_fields

BIN = Path(sys.executable).parent / "domain-embed"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LLM_OPTIONS = ["llm=local", "llm=nim"]
# every option of every group (llm=local and llm=nim today), so a new option file is checked too
ALL_OPTIONS = sorted(f"{g.name}={f.stem}" for g in CONFIGS.iterdir() if g.is_dir() for f in g.glob("*.yaml"))


def cli(*args):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120)


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _unvalidated(overrides):
    """The config exactly as Hydra composes and resolves it, before the schema sees it."""
    raw = _compose(overrides)
    OmegaConf.resolve(raw)
    return raw


def test_cli_rejects_a_wrong_type_in_one_line_naming_key_and_type():
    p = cli("config", "train.learning_rate=abc")
    assert p.returncode == 2, p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "train.learning_rate='abc'" in lines[0] and "float" in lines[0], lines[0]
    assert p.stdout == ""


def test_an_integer_key_rejects_a_fraction():
    p = cli("config", "train.epochs=1.5")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "train.epochs=1.5" in p.stderr and "int" in p.stderr


def test_an_enum_key_rejects_a_bad_value_listing_the_allowed_ones():
    with pytest.raises(UserError) as e:
        load_config(None, ["mine.margin_type=bogus"], save=False)
    msg = str(e.value)
    assert "mine.margin_type='bogus'" in msg and "perc_pos, absolute" in msg, msg
    # a tri-state (auto | true | false) key keeps bools as bools and still refuses anything else
    assert load_config(None, ["synth.judge.enabled=true"], save=False).synth.judge.enabled is True
    with pytest.raises(UserError, match=r"synth.judge.enabled='sometimes' is not one of auto, true, false"):
        load_config(None, ["synth.judge.enabled=sometimes"], save=False)
    with pytest.raises(UserError, match=r"model.pooling='max' is not one of mean, cls, last"):
        load_config(None, ["model.pooling=max"], save=False)


def test_an_unknown_key_is_rejected_naming_it_even_with_plus():
    for o in ("train.lrr=1", "+train.lrr=1"):
        with pytest.raises(UserError) as e:
            load_config(None, [o], save=False)
        assert str(e.value).startswith("train.lrr is not a config key"), str(e.value)
    with pytest.raises(UserError, match=r"^trian.epochs is not a config key \(did you mean train\?\)"):
        load_config(None, ["trian.epochs=3"], save=False)  # the first wrong segment is the one named
    p = cli("config", "train.lrr=1")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "train.lrr" in p.stderr


def test_values_of_several_types_stay_accepted_as_given():
    cfg = load_config(None, ["train.devices=2", "serve.ready_timeout_s=0.5", "train.precision=bf16-mixed",
                             "export.tensorrt=false", "model.query_prefix=null"], save=False)
    assert cfg.train.devices == 2 and cfg.serve.ready_timeout_s == 0.5 and cfg.train.precision == "bf16-mixed"
    assert cfg.export.tensorrt is False and cfg.model.query_prefix is None
    assert load_config(None, [], save=False).serve.ready_timeout_s == 2  # the YAML's int stays an int
    assert load_config(None, [], save=False).train.budget_minutes == "auto"  # auto | number
    assert load_config(None, ["train.budget_minutes=0.5"], save=False).train.budget_minutes == 0.5
    with pytest.raises(UserError, match=r"train.budget_minutes='soon' is not a valid auto \| number \| null"):
        load_config(None, ["train.budget_minutes=soon"], save=False)
    with pytest.raises(UserError, match=r"train.devices='many' is not a valid auto \| int"):
        load_config(None, ["train.devices=many"], save=False)
    with pytest.raises(UserError, match=r"evaluate.k_values=\[1, 'x'\] is not a valid list\[int\]"):
        load_config(None, ["evaluate.k_values=[1,x]"], save=False)


def test_every_group_option_is_checked():
    assert set(LLM_OPTIONS) <= set(ALL_OPTIONS) and len(ALL_OPTIONS) >= 12


@pytest.mark.parametrize("option", ALL_OPTIONS)
def test_every_composed_key_has_a_typed_documented_field(option):
    raw = OmegaConf.to_container(_compose([option]), resolve=False)
    keys = [k for k, _ in _leaves(raw)]
    assert len(keys) > 150
    undocumented = [k for k in keys if find_field(k) is None or not find_field(k)[0].metadata.get("doc", "").strip()]
    assert not undocumented, undocumented
    # and the schema has no key the YAML does not set: the YAML stays the source of the values users see
    assert sorted(k for k, _, _ in iter_fields()) == sorted(keys)


@pytest.mark.parametrize("option", ALL_OPTIONS)
def test_validation_changes_no_value_type_or_order(option):
    raw = _unvalidated([option])
    cfg = load_config(None, [option], save=False)
    before = list(_leaves(OmegaConf.to_container(raw)))
    after = list(_leaves(OmegaConf.to_container(cfg, enum_to_str=True)))
    assert after == before
    assert [type(v) for _, v in after] == [type(v) for _, v in before]  # 120 stays int, 0.7 float, ...
    assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(raw)  # config.yaml and `domain-embed config` unchanged


def test_config_hash_is_that_of_the_untyped_config():
    """config_hash decides whether a stage is up to date: typing the config must not make finished stages rerun."""
    raw = _unvalidated([])
    cfg = load_config(None, [], save=False)
    for keys in (["mine", "model", "seed"], ["synth", "llm", "model", "seed"], ["train"], ["curate"], ["export"]):
        old = {k: OmegaConf.to_container(raw[k]) if OmegaConf.is_config(raw[k]) else raw[k] for k in keys}
        import hashlib

        want = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
        assert config_hash(cfg, keys) == want, keys
    assert str(cfg.mine.margin_type) == "perc_pos" and cfg.mine.margin_type == "perc_pos"


def test_schema_defaults_are_the_yaml_defaults():
    """The dataclass defaults equal configs/ for the default options, so either can be read as the truth."""
    schema = OmegaConf.to_container(OmegaConf.structured(RunConfig), resolve=False, enum_to_str=True)
    assert dict(_leaves(schema)) == dict(_leaves(OmegaConf.to_container(_compose([]), resolve=False)))


def test_a_bad_saved_override_says_where_it_comes_from(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "overrides.json").write_text(json.dumps(["train.epochs=1.5", "+train.lrr=1"]))
    with pytest.raises(UserError) as e:
        load_config(run, [], save=False)
    assert "train.lrr is not a config key" in str(e.value) and str(run / "overrides.json") in str(e.value)
    (run / "overrides.json").write_text(json.dumps(["train.epochs=1.5"]))
    with pytest.raises(UserError, match=r"train.epochs=1.5 is not a valid int .*overrides.json"):
        load_config(run, [], save=False)
    assert load_config(run, ["train.epochs=2"], save=False).train.epochs == 2  # a new value replaces it
    with pytest.raises(UserError) as e:  # on this command line: no pointer to the file
        load_config(run, ["train.epochs=2.5"], save=False)
    assert "overrides.json" not in str(e.value)


def test_a_yaml_key_without_a_schema_field_is_named(tmp_path, monkeypatch):
    import shutil

    tree = tmp_path / "configs"
    shutil.copytree(CONFIGS, tree)
    with (tree / "mine" / "default.yaml").open("a") as f:
        f.write("new_knob: 3\n")
    monkeypatch.setenv("DOMAIN_EMBED_CONFIG_DIR", str(tree))
    with pytest.raises(UserError, match=r"^mine.new_knob is set in the config tree's YAML but is not a config key"):
        load_config(None, [], save=False)


# ------------------------------------------------------------------ the typed view stages read
@pytest.mark.parametrize("option", LLM_OPTIONS)
def test_the_typed_view_holds_declared_types_enums_and_the_same_values(option):
    """schema.typed: dataclasses, StrEnum members and values of the declared type, equal to the
    composed config key for key (plain() of either is the same, so manifests and hashes agree)."""
    import enum

    from domain_embed.schema import (IndexKind, MarginType, Pooling, Strategy, TrainConfig, TritonConfig, plain,
                                     typed)

    cfg = load_config(None, [option], save=False)
    conf = typed(cfg)
    assert isinstance(conf, RunConfig) and isinstance(conf.train, TrainConfig)
    assert isinstance(conf.export.triton, TritonConfig)
    assert conf.mine.index is IndexKind.flat and conf.mine.margin_type is MarginType.perc_pos
    assert conf.model.pooling is Pooling.mean and conf.train.strategy is Strategy.auto
    assert type(conf.train.learning_rate) is float and type(conf.train.epochs) is int
    assert type(conf.model.normalize) is bool and type(conf.evaluate.k_values) is list
    assert all(type(k) is int for k in conf.evaluate.k_values)
    assert plain(conf) == plain(cfg)
    for key, f, tp in iter_fields():
        value = OmegaConf.select(cfg, key)
        got = conf
        for part in key.split("."):
            got = getattr(got, part)
        assert got == (list(value) if not isinstance(value, (str, int, float, bool, type(None), enum.Enum)) else value), key
        if isinstance(got, enum.Enum):  # a StrEnum is also its string: code comparing with strings keeps working
            assert got == got.value and str(got) == got.value


def test_keys_of_several_types_stay_as_given_in_the_typed_view():
    from domain_embed.schema import Toggle, toggle, typed

    conf = typed(load_config(None, ["train.devices=2", "model.int8=true", "synth.budget_minutes=0.5",
                                    "train.budget_minutes=auto", "synth.judge.threshold=7",
                                    "train.precision=16"], save=False))
    assert conf.train.devices == 2 and type(conf.train.devices) is int
    assert conf.model.int8 is True and toggle(conf.model.int8) is Toggle.true
    assert conf.synth.budget_minutes == 0.5 and conf.train.budget_minutes == "auto"
    assert conf.synth.judge.threshold == 7 and type(conf.synth.judge.threshold) is int
    assert conf.train.precision == 16
    assert toggle(conf.synth.judge.enabled) is Toggle.auto and toggle(False) is Toggle.false
    assert toggle("TRUE") is Toggle.true
    with pytest.raises(UserError, match="not one of auto, true, false"):
        toggle("sometimes")


def test_the_typed_view_validates_what_it_was_not_given_validated():
    from domain_embed.schema import typed

    raw = _unvalidated([])
    assert typed(raw).mine.top_k == raw.mine.top_k
    raw.mine.top_k = "many"
    with pytest.raises(UserError, match=r"mine.top_k='many' is not a valid int"):
        typed(raw)


def test_as_section_takes_a_section_of_any_form():
    from domain_embed.schema import TritonConfig, as_section, typed

    cfg = load_config(None, [], save=False)
    typed_section = typed(cfg).export.triton
    assert as_section(typed_section, TritonConfig) is typed_section
    assert as_section(cfg.export.triton, TritonConfig) == typed_section
    assert as_section(None, TritonConfig) == TritonConfig()
    partial = as_section({"max_batch_size": 8}, TritonConfig)  # a benchmark's own section: the rest from defaults
    assert partial.max_batch_size == 8 and partial.instances == TritonConfig().instances
    with pytest.raises(UserError, match="max_batch_size"):
        as_section({"max_batch_size": "big"}, TritonConfig)


def test_a_stage_context_makes_its_typed_view_once():
    from domain_embed.rundir import StageContext
    from domain_embed.stages import STAGES

    ctx = StageContext(STAGES["mine"], Path("/nonexistent"), load_config(None, ["mine.top_k=7"], save=False),
                       quiet=True)
    assert ctx.conf is ctx.conf and ctx.conf.mine.top_k == 7


@pytest.mark.parametrize("override, words", [
    ("train.batch_size=0", "at least 1"),          # hung in the batch planner, silently, for ever
    ("train.learning_rate=-1", "above 0"),         # three tracebacks, then a hint to resume a checkpoint that did not exist
    ("synth.budget_minutes=-1", "at least 0"),     # meant "no budget"
    ("curate.chunk_sentences=0", "at least 1"),    # silently tripled the chunks
    ("train.epochs=0", "at least 1"),
    ("split.test_fraction=1", "below 1"),
    ("serve.port=70000", "at most 65535"),
    ("synth.judge.threshold=11", "at most 10"),
])
def test_a_value_out_of_range_is_a_user_error_naming_the_range(override, words):
    key = override.split("=")[0]
    with pytest.raises(UserError, match=rf"^{re.escape(override.split('=')[0])}=.* is out of range: .*{words}"):
        load_config(None, [override], save=False)
    assert key


def test_bounds_name_real_keys_and_the_defaults_are_inside_them():
    from domain_embed.schema import BOUNDS, find_field

    assert [k for k in BOUNDS if not find_field(k)] == []
    load_config(None, [], save=False)  # every default in range
    for ok in ("synth.budget_minutes=0", "train.budget_minutes=0", "train.budget_minutes=auto", "split.val_fraction=0",
               "train.max_steps=-1", "serve.triton_grpc_port=0"):
        load_config(None, [ok], save=False)
