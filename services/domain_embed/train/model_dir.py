"""Write the trained encoder as a Hugging Face + sentence-transformers model directory with a card."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..config import EncodingSpec
from ..rundir import atomic_write_json, atomic_write_text


def save_model_dir(model, tokenizer, spec: EncodingSpec, out: Path, card: dict[str, Any]) -> None:
    """Write to a temporary sibling, then swap it in, so a crash never leaves a half-written model."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if hasattr(model, "merge_and_unload"):  # LoRA: ship plain weights that load without peft
        model = model.merge_and_unload()
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if spec.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (tmp / "2_Normalize").mkdir()
    atomic_write_json(tmp / "modules.json", modules)
    atomic_write_json(tmp / "1_Pooling" / "config.json", {
        "word_embedding_dimension": spec.dim,
        "pooling_mode_cls_token": spec.pooling == "cls",
        "pooling_mode_mean_tokens": spec.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_lasttoken": spec.pooling == "last",
    })
    atomic_write_json(tmp / "sentence_bert_config.json", {"max_seq_length": spec.max_passage_length,
                                                          "do_lower_case": False})
    atomic_write_json(tmp / "config_sentence_transformers.json", {
        "prompts": {"query": spec.query_prefix, "passage": spec.passage_prefix},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine" if spec.normalize else "dot",
    })
    # The encoding spec travels with the weights: export and serving read it from here.
    spec_out = {**spec.to_dict(), "model_path": "."}
    atomic_write_json(tmp / "encoding_spec.json", spec_out)
    atomic_write_text(tmp / "README.md", model_card(spec, card))
    if out.exists():
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def model_card(spec: EncodingSpec, card: dict[str, Any]) -> str:
    t = card.get("train", {})
    vals = card.get("val_curve", [])
    best = card.get("best_val_ndcg@10")
    base = card.get("base_val_ndcg@10")
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        f"base_model: {card.get('base_model_name', '')}",
        "tags: [sentence-transformers, feature-extraction, domain-embed]",
        "---",
        f"# {card.get('served_name', 'domain-embed model')}",
        "",
        f"Fine-tuned from **{card.get('base_model_name', '')}** (`{card.get('base_model_path', '')}`) by domain-embed "
        "with InfoNCE over mined hard negatives.",
        "",
        "## Use",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        ("m = SentenceTransformer('path/to/model', trust_remote_code=True)  # its own code: the .py files beside it"
         if spec.trust_remote_code else "m = SentenceTransformer('path/to/model')"),
        "q = m.encode(['how do I create an index?'], prompt_name='query')",
        "p = m.encode(['CREATE INDEX builds an index ...'], prompt_name='passage')",
        "```",
        "",
        f"Prefixes: query `{spec.query_prefix!r}`, passage `{spec.passage_prefix!r}`; max lengths {spec.max_query_length} "
        f"/ {spec.max_passage_length} tokens; {spec.pooling} pooling; L2-normalised: {spec.normalize}; dim {spec.dim}.",
        "",
        "## Data",
        "",
        f"- training queries: {card.get('train_queries')} (mined file `mine/train.jsonl`, sha256 `{str(card.get('train_sha', ''))[:12]}`)",
        f"- training passages: {card.get('train_passages')}",
        f"- validation queries: {card.get('val_queries')} (held-out slice of training documents)",
        "",
        "## Training config",
        "",
        "```json",
        json.dumps(t, indent=1, default=str),
        "```",
        "",
        "## Metrics",
        "",
        f"- validation nDCG@10: base {base if base is not None else 'n/a'}, best {best if best is not None else 'n/a'} "
        f"(step {card.get('best_step', 'n/a')})",
        f"- steps: {card.get('steps')}, final loss: {card.get('final_loss')}",
        f"- validation curve: {vals}",
        "",
        "See `evaluate/report.md` in the run directory for the held-out test comparison.",
        "",
    ]
    return "\n".join(lines)
