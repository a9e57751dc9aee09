"""Every gateway setting is in configs/serve/default.yaml, has an env twin, and is in the README table."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from domain_embed.errors import UserError
from domain_embed.serve.settings import ENV_PREFIX, ServeSettings

README = Path(__file__).resolve().parents[2] / "services" / "domain_embed" / "serve" / "README.md"
YAML = Path(__file__).resolve().parents[2] / "configs" / "serve" / "default.yaml"


def test_every_setting_in_config_env_and_docs():
    cfg_keys = set(yaml.safe_load(YAML.read_text()))
    doc = README.read_text()
    for f in fields(ServeSettings):
        assert f.name in cfg_keys, f"serve.{f.name} missing from {YAML}"
        assert f"| `{f.name}` | `{ENV_PREFIX}{f.name.upper()}` |" in doc, f"{f.name} missing from the README table"
    assert cfg_keys <= {f.name for f in fields(ServeSettings)}, "a config key the gateway ignores"


def test_env_twin_wins_over_config(base_cfg):
    env = {"DOMAIN_EMBED_SERVE_MAX_QUEUE": "7", "DOMAIN_EMBED_SERVE_TRITON_RESTART": "false",
           "DOMAIN_EMBED_SERVE_REQUEST_TIMEOUT_S": "2.5", "DOMAIN_EMBED_SERVE_SERVED_NAME": "custom"}
    s = ServeSettings.from_config(base_cfg, env=env)
    assert (s.max_queue, s.triton_restart, s.request_timeout_s, s.served_name) == (7, False, 2.5, "custom")
    s = ServeSettings.from_config(base_cfg, env={"DOMAIN_EMBED_SERVE_READY_TIMEOUT_S": "0.5",
                                                 "DOMAIN_EMBED_SERVE_PROTECT_METRICS_DOCS": "false"})
    assert (s.ready_timeout_s, s.protect_metrics_docs) == (0.5, False)
    d = ServeSettings.from_config(base_cfg, env={})
    assert d.max_queue == int(base_cfg.serve.max_queue) and d.served_name == base_cfg.model.served_name
    assert d.triton_url == f"127.0.0.1:{base_cfg.serve.triton_grpc_port}"
    assert d.ready_timeout_s == float(base_cfg.serve.ready_timeout_s) < d.request_timeout_s
    assert d.protect_metrics_docs is True  # a key protects metrics and docs unless opened on purpose


@pytest.mark.parametrize("key,value", [("MAX_QUEUE", "lots"), ("MAX_QUEUE", "0"), ("DEFAULT_TRUNCATE", "MIDDLE"),
                                       ("READY_TIMEOUT_S", "0"), ("REQUEST_TIMEOUT_S", "-1"),
                                       ("TRITON_HTTP_PORT", "70000"), ("TRITON_GRPC_PORT", "-1")])
def test_bad_setting_is_a_user_error(base_cfg, key, value):
    with pytest.raises(UserError, match=key.lower()):
        ServeSettings.from_config(base_cfg, env={ENV_PREFIX + key: value})
