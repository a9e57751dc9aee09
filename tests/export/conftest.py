"""Fixtures for the export tests; the exported run is built once per session (see tests/serve/conftest.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("_serve_fixtures", Path(__file__).resolve().parents[1] / "serve" / "conftest.py")
_serve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_serve)


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory, minilm_path) -> Path:
    return _serve.make_exported_run(tmp_path_factory.getbasetemp(), minilm_path)


@pytest.fixture(scope="session")
def reference_encoder_export(exported_run):
    from domain_embed.config import EncodingSpec
    from domain_embed.encoding import Encoder
    import json

    spec = EncodingSpec.from_dict(json.loads((exported_run / "triton" / "encoding.json").read_text()))
    return Encoder(spec, device="cpu")
