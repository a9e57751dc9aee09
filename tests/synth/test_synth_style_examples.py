"""Real queries given as style examples reach the generator's prompt and key its generations."""

from __future__ import annotations

import json

from domain_embed.config import load_config
from domain_embed.schema import typed
from domain_embed.synth import prompts as P
from domain_embed.synth.generate import fingerprint


def test_style_examples_reach_prompts_and_fingerprint(tmp_path):
    real = tmp_path / "real.jsonl"
    real.write_text("\n".join(json.dumps({"text": t}) for t in ["vacuum full lock", "pg_dump parallel", "hot standby lag"]))
    plain = typed(load_config(None, [], save=False))
    styled = typed(load_config(None, [f"synth.style_examples_file={real}", "synth.style_examples_n=2"], save=False))
    assert fingerprint(plain) != fingerprint(styled), "generations made without the examples must not be reused"

    from domain_embed.synth.generate import style_queries as _style_queries

    shown = _style_queries(styled)
    assert len(shown) == 2 and set(shown) <= {"vacuum full lock", "pg_dump parallel", "hot standby lag"}
    msgs = P.chat_messages("keyword", ["Passage text."], [], False, "VACUUM", "Description", shown)
    assert all(f'"{q}"' in msgs[-1]["content"] for q in shown)
    assert "Real users" not in P.chat_messages("keyword", ["Passage text."], [], False)[-1]["content"]
    assert all(q in P.completion_prompt("keyword", ["Passage text."], [], shown) for q in shown)
