"""Record types between stages: rows are checked where they are written and where they are read."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from domain_embed.config import load_config
from domain_embed.errors import UserError
from domain_embed.records import Chunk, MinedRow, RecordError, check_file, files_in, record_of
from domain_embed.rundir import run_stage
from domain_embed.stages import STAGES

SAMPLE = Path(__file__).resolve().parents[1] / "synth" / "sample_chunks.jsonl"


def test_every_jsonl_between_stages_has_a_record_type():
    for st in STAGES.values():
        for rel in [*st.inputs, *st.outputs]:
            if rel.endswith(".jsonl"):
                assert record_of(rel) is not None, rel
    assert {r for _, r in files_in("split/eval_beir")} == {r for _, r in files_in("split/val_beir")}
    assert record_of("curate/chunks.jsonl") is Chunk and record_of("mine/train.jsonl") is MinedRow


def test_a_bad_row_names_the_file_the_line_and_the_field(tmp_path):
    good = json.loads(SAMPLE.read_text().splitlines()[0])
    f = tmp_path / "chunks.jsonl"
    rows = [good, good, {k: v for k, v in good.items() if k != "doc_id"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RecordError, match=r"chunks\.jsonl:3: field 'doc_id' \(str\) of a Chunk is missing"):
        check_file(f, Chunk)
    f.write_text(json.dumps({**good, "n_tokens": "127"}) + "\n")
    with pytest.raises(RecordError, match=r":1: field 'n_tokens' of a Chunk is a str, not a int"):
        check_file(f, Chunk)
    f.write_text(json.dumps(good) + "\n[1, 2]\n")
    with pytest.raises(RecordError, match=r":2: a JSON list, not a Chunk object"):
        check_file(f, Chunk)
    # a torn last line (an append-only log cut by a crash) is not an error; a broken middle line is
    f.write_text(json.dumps(good) + "\n" + json.dumps(good)[:20])
    assert check_file(f, Chunk) == 1
    f.write_text(json.dumps(good)[:20] + "\n" + json.dumps(good) + "\n")
    with pytest.raises(RecordError, match=r":1: not valid JSON"):
        check_file(f, Chunk)
    # only the first rows are read: a bad row 25 lines down is the reader's own business
    f.write_text("".join(json.dumps(good) + "\n" for _ in range(25)) + "{}\n")
    assert check_file(f, Chunk, rows=20) == 20


def _curate_writing(rows: list[dict]):
    def curate(ctx):
        (ctx.dir / "chunks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {}
    return dataclasses.replace(STAGES["curate"], fn=curate)


def test_a_stage_that_writes_a_malformed_record_fails_before_its_manifest(tmp_path):
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    rows[1] = {("chunk_id" if k == "id" else k): v for k, v in rows[1].items()}  # a renamed field
    cfg = load_config(tmp_path, [])
    with pytest.raises(RuntimeError, match=r"curate/chunks\.jsonl:2: field 'id' \(str\) of a Chunk is missing"):
        run_stage(_curate_writing(rows), tmp_path, cfg, STAGES, quiet=True)
    assert not (tmp_path / "curate" / "manifest.json").exists()


def test_manifest_records_versions_and_a_reader_refuses_another(tmp_path):
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    cfg = load_config(tmp_path, [])
    man = run_stage(_curate_writing(rows), tmp_path, cfg, STAGES, quiet=True)
    assert man["records"] == {"curate/chunks.jsonl": f"Chunk/{Chunk.VERSION}"}
    # a run directory written by an older domain-embed: the reader says which stage to rerun
    mpath = tmp_path / "curate" / "manifest.json"
    old = json.loads(mpath.read_text())
    old["records"]["curate/chunks.jsonl"] = "Chunk/0"
    mpath.write_text(json.dumps(old))
    with pytest.raises(UserError, match=r"holds Chunk/0 records but this version of domain-embed reads Chunk/1; "
                                        r"rerun `domain-embed curate --force"):
        run_stage(STAGES["synth"], tmp_path, cfg, STAGES, quiet=True)
