"""A tiny hand-written split/ folder (what the split stage writes), so mine/train/evaluate tests do
not depend on curate/synthesize/split. Eight short "documents" about databases, four chunks each,
one question per chunk: docs 0-4 train, doc 5 validation, docs 6-7 test."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

DOCS = [
    ("B-tree indexes", [
        ("A B-tree index keeps keys sorted so equality and range lookups take logarithmic time.", "How fast is a lookup in a B-tree index?"),
        ("CREATE INDEX builds an index on one or more columns of a table.", "Which command builds an index on table columns?"),
        ("A multicolumn index is most useful when the leading column appears in the WHERE clause.", "When does a multicolumn index help a query?"),
        ("Indexes slow down inserts and updates because every index must be maintained.", "Why do indexes make writes slower?"),
    ]),
    ("Transactions", [
        ("BEGIN starts a transaction block and COMMIT makes all of its changes visible at once.", "How do I make several changes visible together?"),
        ("ROLLBACK discards every change made since the transaction began.", "How can I undo changes made in a transaction?"),
        ("Serializable isolation makes concurrent transactions behave as if they ran one after another.", "Which isolation level behaves like sequential execution?"),
        ("A savepoint lets you roll back part of a transaction without abandoning all of it.", "Can I roll back only part of a transaction?"),
    ]),
    ("Backups", [
        ("pg_dump writes a consistent logical backup of one database while it stays in use.", "Which tool makes a logical backup of a single database?"),
        ("pg_restore loads an archive made by pg_dump in custom or directory format.", "How do I restore a custom-format dump?"),
        ("Continuous archiving copies WAL segments so the cluster can be restored to any point in time.", "How does point-in-time recovery work?"),
        ("pg_basebackup takes a physical copy of the whole cluster's data directory.", "What makes a physical copy of the data directory?"),
    ]),
    ("Replication", [
        ("Streaming replication sends WAL records from the primary to standby servers as they are written.", "How do standby servers receive changes from the primary?"),
        ("A hot standby accepts read-only queries while it replays WAL.", "Can a standby answer read queries?"),
        ("Synchronous commit waits until a standby confirms it has received the WAL.", "What does synchronous commit wait for?"),
        ("Logical replication publishes changes of chosen tables to subscribers.", "How can I replicate only some tables?"),
    ]),
    ("JSON types", [
        ("The jsonb type stores JSON in a decomposed binary format that is faster to query.", "Why is jsonb faster to query than json?"),
        ("The json type keeps an exact copy of the input text, including whitespace and key order.", "Which type preserves key order and whitespace?"),
        ("The containment operator @> tests whether one jsonb document contains another.", "Which operator checks jsonb containment?"),
        ("A GIN index speeds up containment and key-existence queries on jsonb columns.", "What index helps jsonb containment queries?"),
    ]),
    ("Partitioning", [
        ("Declarative partitioning splits a table into range, list or hash partitions.", "What kinds of table partitioning are supported?"),
        ("Partition pruning skips partitions that cannot contain rows matching the query.", "How does the planner avoid scanning irrelevant partitions?"),
        ("Dropping an old partition removes its rows far faster than a bulk DELETE.", "What is the fastest way to remove a month of old rows?"),
        ("A default partition stores rows that match no other partition.", "Where do rows go that fit no partition?"),
    ]),
    ("Vacuum", [
        ("VACUUM reclaims storage occupied by dead row versions left by updates and deletes.", "What reclaims space from dead rows?"),
        ("Autovacuum runs VACUUM and ANALYZE automatically when tables change enough.", "Which background process vacuums tables automatically?"),
        ("VACUUM FULL rewrites the whole table and takes an exclusive lock while it runs.", "Which vacuum variant locks the table exclusively?"),
        ("Freezing old transaction ids prevents transaction id wraparound failures.", "How is transaction id wraparound prevented?"),
    ]),
    ("Privileges", [
        ("GRANT gives a role privileges such as SELECT or INSERT on a table.", "How do I let a role read a table?"),
        ("REVOKE removes privileges that were previously granted.", "How do I take a privilege away from a role?"),
        ("Row-level security policies restrict which rows each user can see or modify.", "How can each user see only their own rows?"),
        ("The pg_hba.conf file controls which hosts may connect and how clients authenticate.", "Which file controls client authentication?"),
    ]),
]
TRAIN_DOCS, VAL_DOCS, TEST_DOCS = [0, 1, 2, 3, 4], [5], [6, 7]


def _hid(prefix: str, s: str) -> str:
    return f"{prefix}_{hashlib.sha256(s.encode()).hexdigest()[:16]}"


def _w(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def rows():
    chunks, qa = [], []
    for d, (title, items) in enumerate(DOCS):
        doc_id = _hid("d", title)
        for j, (text, question) in enumerate(items):
            cid = _hid("c", text)
            chunks.append({"id": cid, "doc_id": doc_id, "text": text, "title": title, "section": "",
                           "source": f"{title}.md", "n_tokens": len(text.split()), "_doc": d})
            qa.append({"id": _hid("q", question), "question": question, "answer": text, "query_type": "contextual",
                       "segment_ids": [cid], "doc_ids": [doc_id], "source": {}, "quality": {}, "_doc": d})
    return chunks, qa


def _beir(folder: Path, corpus, queries, split: str) -> None:
    _w(folder / "corpus.jsonl", [{"_id": c["id"], "title": c["title"], "text": c["text"]} for c in corpus])
    # metadata as the split stage writes it (two types, so the report's per-type table has rows)
    _w(folder / "queries.jsonl", [{"_id": q["id"], "text": q["question"],
                                   "metadata": {"query_type": ("factual", "keyword")[i % 2], "source": "llm"}}
                                  for i, q in enumerate(queries)])
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q['id']}\t{s}\t1" for q in queries for s in q["segment_ids"]]
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def strip(rows_):
    return [{k: v for k, v in r.items() if k != "_doc"} for r in rows_]


def write_split(run_dir: Path) -> Path:
    """Write split/ as the split stage would, plus a manifest vouching for it."""
    from domain_embed.rundir import atomic_write_json, sha256_path
    from domain_embed.stages import STAGES

    chunks, qa = rows()
    sp = run_dir / "split"
    tr = [c for c in chunks if c["_doc"] in TRAIN_DOCS]
    trv = [c for c in chunks if c["_doc"] in TRAIN_DOCS + VAL_DOCS]
    _w(sp / "train_corpus.jsonl", strip(tr))
    _w(sp / "train_qa.jsonl", strip([q for q in qa if q["_doc"] in TRAIN_DOCS]))
    _beir(sp / "val_beir", trv, [q for q in qa if q["_doc"] in VAL_DOCS], "dev")
    _beir(sp / "eval_beir", chunks, [q for q in qa if q["_doc"] in TEST_DOCS], "test")
    (sp / "split.json").write_text(json.dumps({"test_docs": [_hid("d", DOCS[d][0]) for d in TEST_DOCS]}))
    outs = {rel: sha256_path(run_dir / rel) for rel in STAGES["split"].outputs}
    atomic_write_json(sp / "manifest.json", {"stage": "split", "config_hash": "fixture", "inputs": {},
                                              "outputs": outs, "counts": {}})
    return run_dir
