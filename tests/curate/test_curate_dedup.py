"""Exact and MinHash near-duplicate detection keep the first document and spare distinct ones."""

from __future__ import annotations

from domain_embed.curate.dedup import doc_id, exact_duplicates, near_duplicates, normalise


def test_exact_dedup_ignores_case_spacing_and_punctuation(paras):
    p = paras("wal-intro.html", 1)[0]
    texts = [p, "  " + p.upper().replace(" ", "   ") + " !", p + " One more sentence."]
    assert exact_duplicates(texts) == [1]
    assert doc_id(texts[0]) == doc_id(texts[1]) != doc_id(texts[2])
    assert normalise("Hello,  WORLD!\n") == "hello world"


def test_near_dedup_removes_light_edits_but_not_related_documents(paras):
    base = " ".join(paras("transaction-iso.html", 4))
    words = base.split()
    for i in range(5, len(words), max(1, len(words) // 4)):  # about four words changed
        words[i] = "edited"
    edited = " ".join(words)
    related = " ".join(paras("explicit-locking.html", 4))   # same topic area, different text
    other = " ".join(paras("datatype-json.html", 4))
    found = near_duplicates([base, related, edited, other], threshold=0.8, num_perm=128)
    assert [(i, j) for i, j, _ in found] == [(2, 0)]
    assert found[0][2] >= 0.8


def test_near_dedup_threshold_is_honoured(paras):
    a = " ".join(paras("transaction-iso.html", 4)).split()
    b = list(a)
    for i in range(0, len(b), 20):  # every 20th word: 3/4 of the 5-gram shingles survive, Jaccard ~0.6
        b[i] = "zzz"
    assert near_duplicates([" ".join(a), " ".join(b)], threshold=0.8) == []
    assert [x[:2] for x in near_duplicates([" ".join(a), " ".join(b)], threshold=0.5)] == [(1, 0)]
