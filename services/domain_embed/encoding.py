"""Turn text into vectors with a Hugging Face encoder, following the shared :class:`EncodingSpec`.

:class:`Encoder` is the torch reference; training uses :func:`pool` and the same prefixes through
:class:`EncodingSpec`; export puts :func:`pool` into the ONNX graph, and inference-only encoding
(synthesis filters, mining, evaluation) runs that graph through :mod:`domain_embed.inference`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .config import EncodingSpec


def pool(hidden, attention_mask, pooling: str = "mean", normalize: bool = True):
    """Pool token states to one vector per text (torch tensors in, torch tensor out)."""
    import torch

    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        out = summed / mask.sum(dim=1).clamp(min=1e-9)
    elif pooling == "cls":
        out = hidden[:, 0]
    elif pooling == "last":
        # right padding: the last real token of each row
        idx = attention_mask.sum(dim=1).long() - 1
        out = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    else:
        raise ValueError(f"unknown pooling {pooling!r}")
    if normalize:
        out = torch.nn.functional.normalize(out.float(), p=2, dim=-1).to(hidden.dtype)
    return out


def apply_prefix(texts: Iterable[str], spec: EncodingSpec, input_type: str) -> list[str]:
    prefix = spec.prefix(input_type)
    return [prefix + t for t in texts]


class Encoder:
    """A bi-encoder for inference: ``encode(texts, "query"|"passage") -> float32 [n, dim]``."""

    backend = "torch"
    precision = "fp32"

    def __init__(self, spec: EncodingSpec, model_path: str | Path | None = None, device: str | None = None,
                 batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.spec = spec
        path = str(model_path or spec.model_path)
        self.model_path = path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        trust = spec.trust_remote_code
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        self.model = AutoModel.from_pretrained(path, trust_remote_code=trust).to(self.device).eval()
        self.batch_size = batch_size

    def tokenize(self, texts: Sequence[str], input_type: str):
        return self.tokenizer(
            apply_prefix(texts, self.spec, input_type),
            max_length=self.spec.max_length(input_type),
            truncation=True,
            padding=True,
            return_tensors="pt",
        )

    def encode(self, texts: Sequence[str], input_type: str, progress: bool = False, desc: str = "",
               callback: Callable[[int], object] | None = None) -> np.ndarray:
        """``callback(n)`` is called after each batch with the number of texts it held (for progress)."""
        import torch
        from tqdm.auto import tqdm

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        # Sort by length so batches pad little; restore the order at the end.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.spec.dim), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        for s in tqdm(starts, desc=desc or f"embed {input_type}s", disable=not progress, leave=False):
            idx = order[s : s + self.batch_size]
            batch = self.tokenize([texts[i] for i in idx], input_type).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
                vec = pool(hidden, batch["attention_mask"], self.spec.pooling, self.spec.normalize)
            out[idx] = vec.float().cpu().numpy()
            if callback is not None:
                callback(len(idx))
        return out

    def encode_queries(self, texts: Sequence[str], **kw) -> np.ndarray:
        return self.encode(texts, "query", **kw)

    def encode_passages(self, texts: Sequence[str], **kw) -> np.ndarray:
        return self.encode(texts, "passage", **kw)
