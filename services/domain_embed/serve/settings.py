"""Gateway settings: configs/serve/default.yaml, each with an environment-variable twin.

``DOMAIN_EMBED_SERVE_<KEY>`` (upper case) overrides ``serve.<key>``; see README.md in this folder
for the table. Environment wins over the config so a container can be retuned without a rebuild.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from ..errors import UserError

ENV_PREFIX = "DOMAIN_EMBED_SERVE_"


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    triton_url: str = ""                 # host:port of Triton gRPC; empty = 127.0.0.1:triton_grpc_port
    triton_grpc_port: int = 8001
    triton_http_port: int = 8000
    triton_metrics_port: int = 8002
    triton_model: str = "embed"
    triton_restart: bool = True          # serve_run restarts a tritonserver that died
    served_name: str = ""                # empty = model.served_name
    max_batch_items: int = 128
    max_body_bytes: int = 2 << 20
    max_queue: int = 64
    retry_after_s: int = 1
    request_timeout_s: float = 60.0
    ready_timeout_s: float = 2.0         # deadline of the readiness probe (and of a request's check while not ready)
    shutdown_grace_s: float = 30.0
    api_key_env: str = "DOMAIN_EMBED_API_KEY"
    protect_metrics_docs: bool = True    # with a key set, /v1/metrics and the OpenAPI pages need it too
    default_truncate: str = "NONE"

    @classmethod
    def from_config(cls, cfg: Any, env: dict[str, str] | None = None) -> "ServeSettings":
        env = os.environ if env is None else env
        section = cfg.get("serve", {}) if cfg is not None else {}
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw: Any = section.get(f.name) if section is not None and f.name in section else None
            env_key = ENV_PREFIX + f.name.upper()
            if env.get(env_key) not in (None, ""):
                raw = env[env_key]
            if raw is None:
                continue
            try:
                if f.type in ("bool", bool):
                    raw = raw if isinstance(raw, bool) else str(raw).strip().lower() in ("1", "true", "yes", "on")
                elif f.type in ("int", int):
                    raw = int(raw)
                elif f.type in ("float", float):
                    raw = float(raw)
                else:
                    raw = str(raw)
            except ValueError:
                raise UserError(f"serve.{f.name} (or {env_key}) = {raw!r} is not a valid {f.type}") from None
            values[f.name] = raw
        s = cls(**values)
        if not s.served_name and cfg is not None:
            s.served_name = str(cfg.model.served_name)
        if not s.triton_url:
            s.triton_url = f"127.0.0.1:{s.triton_grpc_port}"
        if s.default_truncate not in ("NONE", "START", "END"):
            raise UserError(f"serve.default_truncate={s.default_truncate!r}; use NONE, START or END")
        for name in ("triton_grpc_port", "triton_http_port", "triton_metrics_port"):
            if not 0 <= getattr(s, name) <= 65535:
                raise UserError(f"serve.{name}={getattr(s, name)} is not a port; use 1-65535, or 0 to pick a free one "
                                f"at start")
        for name in ("max_batch_items", "max_body_bytes", "max_queue"):
            if getattr(s, name) < 1:
                raise UserError(f"serve.{name} must be at least 1")
        for name in ("request_timeout_s", "ready_timeout_s"):
            if not getattr(s, name) > 0:
                raise UserError(f"serve.{name} must be more than 0 seconds")
        return s

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None if self.api_key_env else None
