"""A live ``/v1/embeddings`` endpoint (ours or any NIM-compatible one) as an encoder, and a drift check."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..errors import UserError


class EndpointEncoder:
    """Embeds through ``POST /v1/embeddings``.

    ``truncate`` is sent with every request. The in-process encoder (encoding.Encoder) cuts every
    text at the spec's max length, keeping the start (``END``: tokens past the limit are dropped), so
    ``END`` makes the endpoint score the same texts; without it a NIM-compatible server applies its
    default (ours: ``NONE``) and rejects every held-out query or passage over the limit.
    """

    def __init__(self, base_url: str, model: str, batch_size: int = 32, timeout_s: float = 60.0,
                 api_key: str | None = None, truncate: str = "END"):
        import httpx

        url = base_url.rstrip("/")
        if not url.endswith("/v1/embeddings"):
            url = url + ("/embeddings" if url.endswith("/v1") else "/v1/embeddings")
        self.url, self.model, self.batch_size = url, model, batch_size
        if truncate not in ("NONE", "START", "END"):
            raise ValueError(f"truncate must be NONE, START or END, not {truncate!r}")
        self.truncate = truncate
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)

    def encode(self, texts: Sequence[str], input_type: str) -> np.ndarray:
        import httpx

        out: list[list[float]] = []
        texts = list(texts)
        for s in range(0, len(texts), self.batch_size):
            body = {"input": texts[s : s + self.batch_size], "model": self.model, "input_type": input_type,
                    "encoding_format": "float", "truncate": self.truncate}
            try:
                r = self.client.post(self.url, json=body)
            except httpx.HTTPError as exc:
                raise UserError(f"cannot reach {self.url} ({type(exc).__name__}: {exc}); start the server or fix --endpoint") from None
            if r.status_code != 200:
                try:
                    msg = r.json().get("message") or r.text
                except ValueError:
                    msg = r.text
                raise UserError(f"{self.url} answered {r.status_code}: {str(msg)[:200]}; check --endpoint and model.served_name")
            data = sorted(r.json()["data"], key=lambda d: d["index"])
            out.extend(d["embedding"] for d in data)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)

    def close(self) -> None:
        self.client.close()


def max_cosine_drift(a: np.ndarray, b: np.ndarray) -> float:
    """max over rows of 1 - cos(a_i, b_i)."""
    if a.shape != b.shape:
        raise UserError(f"endpoint returned vectors of shape {a.shape[1:]} but the checkpoint gives {b.shape[1:]}; "
                        "is the endpoint serving this run's model?")
    an = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
    bn = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
    return float(np.max(1.0 - np.sum(an * bn, axis=1))) if len(a) else 0.0


def api_key_from_env(name: str | None) -> str | None:
    return os.environ.get(name) if name else None
