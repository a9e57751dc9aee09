"""Triton python-backend model: tokenise (prefix, truncation, token counts) and, in ``embed``
mode, run the ONNX encoder in-process with ONNX Runtime.

Copied verbatim into the generated model repository. It imports only numpy, tokenizers,
onnxruntime and Triton's ``triton_python_backend_utils`` (no domain_embed), so it runs in the
stock tritonserver container as well as on the CPU binary from nvidia-pytriton.

Modes (the ``mode`` parameter in config.pbtxt):
  embed     TEXT, INPUT_TYPE, TRUNCATE -> EMBEDDING [dim] fp32, TOKENS [1] int32   (single model)
  tokenize  TEXT, INPUT_TYPE, TRUNCATE -> INPUT_IDS, ATTENTION_MASK [-1] int64, TOKENS (ensemble step)

Bad input (over-length text with TRUNCATE=NONE, an unknown input type) comes back as a per-request
``TritonError`` whose message starts with ``invalid input:``; the gateway maps it to HTTP 400.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

INVALID = "invalid input: "


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_repository(repo: Path, model_name: str) -> None:
    """Refuse to load when any file of this model (or the encoding spec) differs from the manifest."""
    manifest_path = repo / "checksums.json"
    if not manifest_path.is_file():
        raise pb_utils.TritonModelException(f"{manifest_path} is missing; regenerate with `domain-embed export --force`")
    files = json.loads(manifest_path.read_text())["files"]
    mine = {rel: digest for rel, digest in files.items() if rel.startswith(model_name + "/") or rel == "encoding.json"}
    if not any(rel.startswith(model_name + "/") for rel in mine):
        raise pb_utils.TritonModelException(f"manifest lists no files of model {model_name!r}")
    for rel, digest in mine.items():
        p = repo / rel
        if not p.is_file():
            raise pb_utils.TritonModelException(f"tampered model repository: {rel} is missing")
        got = _sha256(p)
        if got != digest:
            raise pb_utils.TritonModelException(
                f"tampered model repository: sha256 of {rel} is {got[:12]}, manifest says {digest[:12]}; "
                f"refusing to load. Regenerate it with `domain-embed export --force`")
    for p in (repo / model_name).rglob("*"):
        rel = p.relative_to(repo).as_posix()
        if p.is_file() and "__pycache__" not in rel and not p.name.startswith(".") and rel not in files:
            raise pb_utils.TritonModelException(f"tampered model repository: {rel} is not in the manifest")


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        # config.pbtxt is generated complete by the export stage (batching on or off as configured);
        # nothing is added here, so what the file says is what runs.
        return auto_complete_model_config

    def initialize(self, args):
        from tokenizers import Tokenizer

        self.config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in self.config.get("parameters", {}).items()}
        self.mode = params.get("mode", "embed")
        model_dir = Path(args["model_repository"])
        repo = model_dir.parent
        verify_repository(repo, args["model_name"])
        version_dir = model_dir / str(args["model_version"])
        self.spec = json.loads((repo / "encoding.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.pad_id = int(params.get("pad_id", "0"))
        self.chunk = int(params.get("ort_batch", "32"))
        self.bucket_ratio = float(params.get("bucket_ratio", "1.25"))
        self.session = None
        if self.mode == "embed":
            import onnxruntime as ort

            so = ort.SessionOptions()
            threads = int(params.get("intra_op_threads", "0"))
            if threads:
                so.intra_op_num_threads = threads
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
            if args.get("model_instance_kind") != "GPU":
                providers = ["CPUExecutionProvider"]
            self.session = ort.InferenceSession(str(version_dir / "model.onnx"), so, providers=providers)

    # ------------------------------------------------------------ tokenisation
    def _strings(self, request, name, default=None):
        t = pb_utils.get_input_tensor_by_name(request, name)
        if t is None:
            return None if default is None else default
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in t.as_numpy().reshape(-1)]

    def _tokenize(self, texts, input_types, truncates):
        """Token ids per text: the prefix for its input type, then truncation as asked."""
        prefixed, limits = [], []
        for i, (text, kind) in enumerate(zip(texts, input_types)):
            if kind == "query":
                prefix, limit = self.spec["query_prefix"], int(self.spec["max_query_length"])
            elif kind == "passage":
                prefix, limit = self.spec["passage_prefix"], int(self.spec["max_passage_length"])
            else:
                raise ValueError(f"{INVALID}input_type of item {i} is {kind!r}; use 'query' or 'passage'")
            prefixed.append((prefix, prefix + text))
            limits.append(limit)
        encs = self.tokenizer.encode_batch([p for _, p in prefixed], add_special_tokens=True)
        out = []
        for i, (enc, (prefix, _), limit, mode) in enumerate(zip(encs, prefixed, limits, truncates)):
            ids = enc.ids
            if len(ids) <= limit:
                out.append(ids)
                continue
            if mode == "NONE":
                raise ValueError(
                    f"{INVALID}input {i} is {len(ids)} tokens long (with prefix and special tokens), over the "
                    f"maximum of {limit} for this input_type; shorten it or set truncate to END or START")
            special = enc.special_tokens_mask
            head = 0  # leading special tokens and the prefix stay whatever the truncation side
            while head < len(ids) and (special[head] or (prefix and enc.offsets[head][1] <= len(prefix))):
                head += 1
            tail = 0
            while tail < len(ids) - head and special[len(ids) - 1 - tail]:
                tail += 1
            body = ids[head: len(ids) - tail]
            keep = max(0, limit - head - tail)
            body = body[:keep] if mode == "END" else body[len(body) - keep:] if keep else []
            out.append(ids[:head] + body + ids[len(ids) - tail:])
        return out

    def _pad(self, rows):
        width = max(1, max(len(r) for r in rows))
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = r
            mask[j, : len(r)] = 1
        return ids, mask

    # ------------------------------------------------------------ execution
    def execute(self, requests):
        responses = [None] * len(requests)
        parsed = []  # (request index, token rows)
        for ri, request in enumerate(requests):
            try:
                texts = self._strings(request, "TEXT")
                n = len(texts)
                kinds = self._strings(request, "INPUT_TYPE") or ["passage"] * n
                truncs = [t.upper() for t in (self._strings(request, "TRUNCATE") or ["END"] * n)]
                for t in truncs:
                    if t not in ("NONE", "START", "END"):
                        raise ValueError(f"{INVALID}truncate must be NONE, START or END, not {t!r}")
                if len(kinds) != n or len(truncs) != n:
                    raise ValueError(f"{INVALID}TEXT, INPUT_TYPE and TRUNCATE must have the same batch size")
                parsed.append((ri, self._tokenize(texts, kinds, truncs)))
            except ValueError as exc:
                responses[ri] = self._error(str(exc), invalid=True)
            except Exception as exc:  # never let one request take the model down
                responses[ri] = self._error(f"tokenization failed: {type(exc).__name__}: {exc}")
        if self.mode == "tokenize":
            for ri, rows in parsed:
                ids, mask = self._pad(rows)
                responses[ri] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("INPUT_IDS", ids), pb_utils.Tensor("ATTENTION_MASK", mask),
                    pb_utils.Tensor("TOKENS", np.array([[len(r)] for r in rows], dtype=np.int32))])
            return responses
        try:
            # One pass over every text of every request the dynamic batcher gave us, sorted by
            # length so that each ONNX Runtime call pads little.
            flat = [(ri, j, rows[j]) for ri, rows in parsed for j in range(len(rows))]
            order = sorted(range(len(flat)), key=lambda k: len(flat[k][2]))
            vectors = [None] * len(flat)
            for idx in self._buckets(order, [len(f[2]) for f in flat]):
                ids, mask = self._pad([flat[k][2] for k in idx])
                emb = self.session.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})[0]
                for k, v in zip(idx, emb):
                    vectors[k] = v
            pos = 0
            for ri, rows in parsed:
                emb = np.stack(vectors[pos: pos + len(rows)]).astype(np.float32)
                pos += len(rows)
                responses[ri] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("EMBEDDING", emb),
                    pb_utils.Tensor("TOKENS", np.array([[len(r)] for r in rows], dtype=np.int32))])
        except Exception as exc:
            for ri, _ in parsed:
                responses[ri] = self._error(f"inference failed: {type(exc).__name__}: {exc}")
        return responses

    def _buckets(self, order, lengths):
        """Runs of the length-sorted items, at most ``ort_batch`` long, whose longest is within
        ``bucket_ratio`` of their shortest: on a CPU, compute grows with padded tokens, so merging a
        short text into a long text's batch costs more than a separate call."""
        out, cur = [], []
        for k in order:
            if cur and (len(cur) >= self.chunk or lengths[k] > self.bucket_ratio * lengths[cur[0]] + 4):
                out.append(cur)
                cur = []
            cur.append(k)
        if cur:
            out.append(cur)
        return out

    @staticmethod
    def _error(message, invalid=False):
        code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if invalid else None
        err = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
        return pb_utils.InferenceResponse(output_tensors=[], error=err)

    def finalize(self):
        self.session = None
        self.tokenizer = None
