"""The gateway's only path to the model: Triton over gRPC (tritonclient.grpc.aio), one channel reused.

Errors are translated here into the gateway's types: Triton's per-request ``invalid input:``
errors become 400, a request Triton's queue policy rejected (queue timeout or size, see
``export.triton.queue_timeout_us``) 429, an unreachable, hung (gRPC deadline) or unloaded model
503, anything else 500. Every call carries a gRPC deadline (``client_timeout``).
"""

from __future__ import annotations

import asyncio
import re
from typing import Sequence

import numpy as np

from .errors import BadRequest, InferenceFailed, QueueFull, TritonUnavailable

INVALID_MARK = "invalid input: "
# how the model's per-item errors name an item (export/triton_model/model.py: "input 3 is ...", "of item 3 is")
_ITEM = re.compile(r"^(input |input_type of item )(\d+)(?= is )")
# Substrings of Triton/gRPC errors that mean "not there right now" rather than "this input is bad".
_UNAVAILABLE = ("unavailable", "failed to connect", "connection refused", "socket closed", "deadline",
                "unknown model", "is not ready", "not found", "unable to find", "server is not ready", "cancelled",
                "stub process", "exited")
# What Triton says when its queue policy refuses a request (timeout_action REJECT, max_queue_size).
_BUSY = ("request timeout expired", "exceeds maximum queue size")


class TritonEmbedder:
    def __init__(self, url: str, model: str, timeout_s: float, retry_after_s: int = 1):
        self.url, self.model, self.timeout_s, self.retry_after_s = url, model, timeout_s, retry_after_s
        self._client = None
        self.max_batch: int | None = None

    def _get(self):
        if self._client is None:
            import tritonclient.grpc.aio as grpcclient

            self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    def _translate(self, exc: Exception) -> Exception:
        from tritonclient.utils import InferenceServerException

        msg = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
        status = str(exc.status() or "") if isinstance(exc, InferenceServerException) else ""
        if INVALID_MARK in (msg or ""):
            return BadRequest(msg[msg.index(INVALID_MARK) + len(INVALID_MARK):])
        low = f"{status} {msg}".lower()
        if any(s in low for s in _BUSY):
            return QueueFull(f"the inference server is overloaded: its queue refused the request ({msg[:200]}); "
                             f"retry after {self.retry_after_s}s", headers={"Retry-After": str(self.retry_after_s)})
        if isinstance(exc, (asyncio.TimeoutError, ConnectionError, OSError)) or any(s in low for s in _UNAVAILABLE):
            return TritonUnavailable(f"the inference server is unavailable ({(msg or status)[:200]}); retry shortly",
                                     headers={"Retry-After": str(self.retry_after_s)})
        return InferenceFailed(f"inference failed: {(msg or status)[:300]}")

    async def _max_batch(self, timeout_s: float) -> int:
        if self.max_batch is None:
            try:
                cfg = await self._get().get_model_config(self.model, as_json=True, client_timeout=timeout_s)
            except Exception as exc:
                raise self._translate(exc) from None
            self.max_batch = int(cfg.get("config", cfg).get("max_batch_size", 0) or 0) or 64
        return self.max_batch

    async def _infer(self, texts: Sequence[str], input_type: str, truncate: str,
                     timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
        import tritonclient.grpc.aio as grpcclient

        n = len(texts)
        arrays = {
            "TEXT": np.array([[t.encode("utf-8", "surrogatepass")] for t in texts], dtype=object),
            "INPUT_TYPE": np.array([[input_type.encode()]] * n, dtype=object),
            "TRUNCATE": np.array([[truncate.encode()]] * n, dtype=object),
        }
        inputs = []
        for name, arr in arrays.items():
            i = grpcclient.InferInput(name, [n, 1], "BYTES")
            i.set_data_from_numpy(arr)
            inputs.append(i)
        outputs = [grpcclient.InferRequestedOutput("EMBEDDING"), grpcclient.InferRequestedOutput("TOKENS")]
        try:
            res = await self._get().infer(self.model, inputs, outputs=outputs, client_timeout=timeout_s)
        except Exception as exc:
            raise self._translate(exc) from None
        return res.as_numpy("EMBEDDING"), res.as_numpy("TOKENS").reshape(-1)

    async def embed(self, texts: Sequence[str], input_type: str, truncate: str,
                    timeout_s: float | None = None) -> tuple[np.ndarray, int]:
        """Vectors [n, dim] and the total token count; lists over Triton's max batch go as several requests.
        ``timeout_s`` (default: the request timeout) is the gRPC deadline of each call to Triton."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        step = await self._max_batch(timeout_s)

        async def part(start: int) -> tuple[np.ndarray, np.ndarray]:
            try:
                return await self._infer(texts[start: start + step], input_type, truncate, timeout_s)
            except BadRequest as exc:
                # the model numbers items within the part it was sent; the caller numbers them in its request
                raise BadRequest(_ITEM.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + start}", exc.message, 1),
                                 exc.headers) from None

        parts = await asyncio.gather(*[part(s) for s in range(0, len(texts), step)])
        vecs = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        return vecs, int(sum(int(p[1].sum()) for p in parts))

    async def close(self) -> None:
        if self._client is not None:
            try:
                await self._client.close()
            finally:
                self._client = None
