"""How far the synthetic queries are from what real users type, and what to change in synthesis.

An evaluation on synthetic questions alone can flatter a model: if users type three-word keyword
searches and the generator wrote full questions, the held-out numbers measure the wrong thing.
:func:`drift_report` compares the two sets on what matters for retrieval -- length, question vs
keyword style, vocabulary shared with the corpus, and distance in the embedding space -- and
turns large gaps into ``flags``: one plain sentence each, naming the config key to change.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Sequence

import numpy as np

# Words that open a question (or a request phrased as one) in English search logs.
QUESTION_WORDS = frozenset(
    "what why how when where which who whom whose can could does do did is are was were should would "
    "will shall may might must has have am isn't aren't doesn't don't can't won't".split()
)
# Queries of at most this many words, not phrased as a question, read as keyword searches.
KEYWORD_MAX_WORDS = 5
STOPWORDS = frozenset(
    "a an the of to in on for and or with by from at as is are be it this that these those what why how "
    "when where which who can could does do did should would will i my me we you your our use using into "
    "there their its was were not no if then than so such about via vs".split()
)
_TOKEN = re.compile(r"[a-z0-9_]+(?:[.'-][a-z0-9_]+)*")

# Which config key controls each query type (heading/title come from LLM-free structure queries).
TYPE_KNOB = {
    "factual": "synth.types.factual",
    "keyword": "synth.types.keyword",
    "procedural": "synth.types.procedural",
    "structural": "synth.types.structural",
    "multi_hop": "synth.types.multi_hop",
    "heading": "synth.structure.enabled",
    "title": "synth.structure.enabled",
    "question": "synth.structure.questions",
}

# Thresholds for the flags. They are deliberately coarse: a flag should mean "change something".
STYLE_GAP = 0.3           # difference in the share of question-style queries
LENGTH_RATIO = 1.8        # median length ratio between the sets...
LENGTH_MIN_GAP = 3        # ...and at least this many words apart
VOCAB_GAP = 0.15          # share of content words found in the corpus
COVERAGE_COS = 0.5        # a real query with no synthetic query this close is "uncovered"
COVERAGE_FRACTION = 0.3   # flag when this share of real queries is uncovered
MMD_ALPHA = 0.01          # permutation-test level for "the sets differ in embedding space"
NN_GAP = 0.1              # ...and real->synthetic similarity this far under synthetic->synthetic
STRUCTURE_SHARE = 0.7     # flag when heading/title pseudo-queries are this much of the synthetic set
STRUCTURE_TYPES = ("heading", "title")


def words(text: str) -> list[str]:
    return text.split()


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def query_style(text: str) -> str:
    """``question`` (a wh-word or auxiliary first, or a '?'), ``keyword`` (a short phrase), else ``phrase``."""
    t = text.strip()
    ws = tokens(t)
    if t.endswith("?") or (ws and ws[0] in QUESTION_WORDS):
        return "question"
    if len(words(t)) <= KEYWORD_MAX_WORDS:
        return "keyword"
    return "phrase"


def _length_stats(lengths: Sequence[int]) -> dict[str, float]:
    a = np.asarray(lengths, dtype=float)
    if a.size == 0:
        return {"n": 0, "mean": 0.0, "median": 0.0, "p90": 0.0, "min": 0, "max": 0}
    return {"n": int(a.size), "mean": round(float(a.mean()), 2), "median": float(np.median(a)),
            "p90": float(np.percentile(a, 90)), "min": int(a.min()), "max": int(a.max())}


def _style_mix(texts: Sequence[str]) -> dict[str, float]:
    c = Counter(query_style(t) for t in texts)
    n = max(len(texts), 1)
    return {k: round(c.get(k, 0) / n, 4) for k in ("question", "keyword", "phrase")}


def corpus_vocabulary(corpus_texts: Sequence[str]) -> set[str]:
    vocab: set[str] = set()
    for t in corpus_texts:
        vocab.update(tokens(t))
    return vocab


def _vocab_overlap(texts: Sequence[str], vocab: set[str]) -> tuple[float, Counter]:
    """Mean share of a query's content words found in the corpus; and the words that were not."""
    fracs, missing = [], Counter()
    for t in texts:
        content = [w for w in tokens(t) if w not in STOPWORDS]
        if not content:
            continue
        hit = [w in vocab for w in content]
        fracs.append(sum(hit) / len(content))
        missing.update(w for w, h in zip(content, hit) if not h)
    return (round(float(np.mean(fracs)), 4) if fracs else 0.0), missing


def _mmd_rbf(x: np.ndarray, y: np.ndarray, n_perm: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Unbiased MMD^2 with an RBF kernel (median-heuristic bandwidth) and its permutation p-value."""
    z = np.concatenate([x, y])
    sq = np.clip(2.0 - 2.0 * (z @ z.T), 0.0, None) if _unit(z) else _sqdist(z)
    off = sq[~np.eye(len(z), dtype=bool)]
    sigma2 = float(np.median(off)) if off.size else 1.0
    sigma2 = sigma2 if sigma2 > 1e-12 else 1.0
    k = np.exp(-sq / sigma2)
    nx = len(x)

    def stat(idx: np.ndarray) -> float:
        kk = k[np.ix_(idx, idx)]
        a, b = kk[:nx, :nx], kk[nx:, nx:]
        ab = kk[:nx, nx:]
        m, n = a.shape[0], b.shape[0]
        return float((a.sum() - np.trace(a)) / (m * (m - 1)) + (b.sum() - np.trace(b)) / (n * (n - 1)) - 2 * ab.mean())

    base = np.arange(len(z))
    observed = stat(base)
    exceed = sum(stat(rng.permutation(base)) >= observed for _ in range(n_perm))
    return observed, (exceed + 1) / (n_perm + 1), sigma2


def _unit(z: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-3))


def _sqdist(z: np.ndarray) -> np.ndarray:
    n = (z * z).sum(1)
    return np.clip(n[:, None] + n[None, :] - 2 * z @ z.T, 0.0, None)


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)


def _embedding_section(real: list[str], synth: list[str], synth_types: list[str], encoder: Any,
                       max_n: int, n_perm: int, rng: np.random.Generator) -> dict[str, Any]:
    ri = np.arange(len(real)) if len(real) <= max_n else np.sort(rng.choice(len(real), max_n, replace=False))
    si = np.arange(len(synth)) if len(synth) <= max_n else np.sort(rng.choice(len(synth), max_n, replace=False))
    r_txt, s_txt = [real[i] for i in ri], [synth[i] for i in si]
    s_typ = [synth_types[i] for i in si]
    # Both sets are queries, so both get the query prefix: the comparison is in the space the
    # retriever actually searches from.
    r = _normalize(np.asarray(encoder.encode(r_txt, "query"), dtype=np.float64))
    s = _normalize(np.asarray(encoder.encode(s_txt, "query"), dtype=np.float64))
    rs = r @ s.T
    r2s = rs.max(axis=1)
    s2r = rs.max(axis=0)

    def loo_nn(m: np.ndarray) -> float:
        if len(m) < 2:
            return float("nan")
        sim = m @ m.T
        np.fill_diagonal(sim, -np.inf)
        return float(sim.max(axis=1).mean())

    mmd2, p, sigma2 = _mmd_rbf(r, s, n_perm, rng) if len(r) >= 2 and len(s) >= 2 else (float("nan"), float("nan"), float("nan"))
    nearest_type = Counter(s_typ[j] for j in rs.argmax(axis=1))
    uncovered = [(float(r2s[i]), r_txt[i]) for i in range(len(r_txt)) if r2s[i] < COVERAGE_COS]
    uncovered.sort()
    per_type_nn = {}
    for t in sorted(set(s_typ)):
        cols = [j for j, tt in enumerate(s_typ) if tt == t]
        # how close real queries get to this type's queries, on average over real queries
        per_type_nn[t] = round(float(rs[:, cols].max(axis=1).mean()), 4)
    return {
        "n_real": len(r_txt), "n_synthetic": len(s_txt),
        "nn_cosine_real_to_synthetic": round(float(r2s.mean()), 4),
        "nn_cosine_synthetic_to_real": round(float(s2r.mean()), 4),
        "nn_cosine_real_to_real": round(loo_nn(r), 4),
        "nn_cosine_synthetic_to_synthetic": round(loo_nn(s), 4),
        "centroid_cosine": round(float(_normalize(r.mean(0, keepdims=True)) @ _normalize(s.mean(0, keepdims=True)).T), 4),
        "mmd2_rbf": round(mmd2, 6), "mmd_p_value": round(p, 4), "mmd_bandwidth_sq": round(sigma2, 4),
        "mmd_permutations": n_perm,
        "real_nearest_synthetic_type": {t: round(c / len(r_txt), 4) for t, c in nearest_type.most_common()},
        "per_type_nn_cosine_from_real": per_type_nn,
        "uncovered_fraction": round(len(uncovered) / max(len(r_txt), 1), 4),
        "uncovered_examples": [t for _, t in uncovered[:5]],
        "real_to_synthetic_nn": [round(float(x), 4) for x in r2s],
        "synthetic_to_real_nn": [round(float(x), 4) for x in s2r],
    }


def drift_report(real: Sequence[str], synthetic: Sequence[dict[str, Any]], corpus_texts: Sequence[str],
                 encoder: Any | None = None, *, max_embed: int = 1000, n_perm: int = 200,
                 seed: int = 0) -> dict[str, Any]:
    """Compare real user queries with synthetic ``qa.jsonl`` rows; return statistics and ``flags``.

    Args:
        real: the real queries' texts.
        synthetic: rows of ``synth/qa.jsonl`` (``question`` and ``query_type`` are read).
        corpus_texts: the chunk texts the queries are asked against (for vocabulary overlap).
        encoder: anything with ``encode(texts, "query") -> [n, d]`` (a :class:`~domain_embed.encoding.Encoder`);
            ``None`` skips the embedding-space section.
        max_embed: sample at most this many queries per set for the embedding statistics.
        n_perm: permutations for the MMD test's p-value.

    Returns a JSON-ready dict: ``real``/``synthetic`` summaries (length, style mix, vocabulary
    overlap), ``histogram`` (shared bins of query length in words), ``by_type``, ``embedding``,
    and ``flags`` (a list of ``{"code", "message"}``; empty when the sets look alike).
    """
    from ..errors import UserError

    real = [" ".join(t.split()) for t in real if t and t.strip()]
    rows = [r for r in synthetic if isinstance(r.get("question"), str) and r["question"].strip()]
    if not real:
        raise UserError("no real queries to compare; give a file with at least one query")
    if not rows:
        raise UserError("no synthetic queries to compare (synth/qa.jsonl is empty); run `domain-embed synth` first")
    synth = [" ".join(r["question"].split()) for r in rows]
    types = [str(r.get("query_type") or "unknown") for r in rows]
    rng = np.random.default_rng(seed)
    vocab = corpus_vocabulary(corpus_texts)

    def summary(texts: list[str]) -> tuple[dict[str, Any], Counter]:
        overlap, missing = _vocab_overlap(texts, vocab)
        return {"n": len(texts), "length_words": _length_stats([len(words(t)) for t in texts]),
                "style": _style_mix(texts), "ends_with_question_mark": round(sum(t.endswith("?") for t in texts) / len(texts), 4),
                "vocab_overlap": overlap}, missing

    real_sum, real_missing = summary(real)
    synth_sum, _ = summary(synth)
    real_sum["words_not_in_corpus"] = [w for w, _ in real_missing.most_common(10)]
    max_len = max(len(words(t)) for t in real + synth)
    edges = list(range(0, max(max_len, 1) + 2, 1 if max_len <= 20 else 2 if max_len <= 40 else 5))
    histogram = {
        "bin_edges": edges,
        "real": np.histogram([len(words(t)) for t in real], bins=edges)[0].tolist(),
        "synthetic": np.histogram([len(words(t)) for t in synth], bins=edges)[0].tolist(),
    }
    by_type: dict[str, Any] = {}
    for t in sorted(set(types)):
        tt = [q for q, ty in zip(synth, types) if ty == t]
        s, _ = summary(tt)
        s["share"] = round(len(tt) / len(synth), 4)
        by_type[t] = s
    report: dict[str, Any] = {
        "real": real_sum, "synthetic": synth_sum, "histogram": histogram, "by_type": by_type,
        "corpus_vocabulary_size": len(vocab),
        "embedding": None,
        "real_examples": real[:5], "synthetic_examples": synth[:5],
    }
    if encoder is not None:
        report["embedding"] = _embedding_section(real, synth, types, encoder, max_embed, n_perm, rng)
        for t, v in report["embedding"]["per_type_nn_cosine_from_real"].items():
            by_type[t]["nn_cosine_from_real"] = v
    report["flags"] = drift_flags(report)
    return report


def _pct(x: float) -> str:
    return f"{round(100 * x)}%"


def drift_flags(report: dict[str, Any]) -> list[dict[str, str]]:
    """Plain-language advice from a drift report; each names the config key to change."""
    flags: list[dict[str, str]] = []
    r, s = report["real"], report["synthetic"]
    rq, sq = r["style"]["question"], s["style"]["question"]
    rk, sk = r["style"]["keyword"], s["style"]["keyword"]
    rmed, smed = r["length_words"]["median"], s["length_words"]["median"]

    def add(code: str, msg: str) -> None:
        flags.append({"code": code, "message": msg})

    if rk - sk >= STYLE_GAP and sq > rq:
        add("style_keyword", f"real queries are {rmed:g}-word keyword searches ({_pct(rk)} keyword-style); "
            f"{_pct(sq)} of synthetic ones are full questions — raise synth.types.keyword (and lower synth.types.factual), "
            f"or give real examples in synth.style_examples_file")
    elif rq - sq >= STYLE_GAP:
        add("style_question", f"{_pct(rq)} of real queries are full questions, but only {_pct(sq)} of synthetic ones "
            f"({_pct(sk)} are keyword strings) — raise synth.types.factual or synth.types.procedural and lower "
            f"synth.types.keyword, or give real examples in synth.style_examples_file")
    if smed >= LENGTH_RATIO * max(rmed, 1) and smed - rmed >= LENGTH_MIN_GAP:
        add("length_longer", f"synthetic queries are longer than real ones (median {smed:g} vs {rmed:g} words) — "
            f"ask for shorter queries: raise synth.types.keyword, or add short real examples via synth.style_examples_file")
    elif rmed >= LENGTH_RATIO * max(smed, 1) and rmed - smed >= LENGTH_MIN_GAP:
        add("length_shorter", f"real queries are longer than synthetic ones (median {rmed:g} vs {smed:g} words) — "
            f"raise synth.types.procedural or synth.types.multi_hop for longer, more specific queries")
    if s["vocab_overlap"] - r["vocab_overlap"] >= VOCAB_GAP:
        miss = ", ".join(r.get("words_not_in_corpus", [])[:5])
        add("vocabulary", f"only {_pct(r['vocab_overlap'])} of real queries' words occur in the corpus, against "
            f"{_pct(s['vocab_overlap'])} for synthetic ones (missing: {miss}) — synthetic queries copy the documents' "
            f"wording; lower synth.max_copy_ngram, add paraphrasing examples via synth.style_examples_file, "
            f"and check the corpus covers what users ask")
    by_type = report.get("by_type", {})
    structure = sum(by_type.get(t, {}).get("share", 0.0) for t in STRUCTURE_TYPES)
    if structure >= STRUCTURE_SHARE:
        n_llm = sum(v["n"] for t, v in by_type.items() if t not in STRUCTURE_TYPES)
        add("structure_dominated", f"{_pct(structure)} of synthetic queries are heading/title pseudo-queries and only "
            f"{n_llm} came from the LLM — the generator's questions were mostly filtered out, so the held-out set "
            f"mostly tests heading lookup; use a stronger LLM (llm=nim) or raise synth.budget_minutes")
    e = report.get("embedding")
    if e:
        if e["uncovered_fraction"] >= COVERAGE_FRACTION:
            ex = "; ".join(f"'{t}'" for t in e["uncovered_examples"][:3])
            add("coverage", f"{_pct(e['uncovered_fraction'])} of real queries have no synthetic query nearby "
                f"(cosine < {COVERAGE_COS}), e.g. {ex} — raise synth.budget_minutes so more of the corpus gets queries, "
                f"and check those topics are in the corpus")
        gap = e["nn_cosine_synthetic_to_synthetic"] - e["nn_cosine_real_to_synthetic"]
        if e["mmd_p_value"] <= MMD_ALPHA and gap >= NN_GAP:
            add("embedding_distance", f"real and synthetic queries sit apart in embedding space (MMD² {e['mmd2_rbf']:.3f}, "
                f"p={e['mmd_p_value']:.3f}; a real query's nearest synthetic one has cosine {e['nn_cosine_real_to_synthetic']:.2f} "
                f"against {e['nn_cosine_synthetic_to_synthetic']:.2f} among synthetic ones) — held-out metrics on synthetic "
                f"queries may not predict what users see; evaluate with --real-queries and --qrels if you can")
        near = e.get("real_nearest_synthetic_type") or {}
        for t, share in near.items():
            have = by_type.get(t, {}).get("share", 0.0)
            if share >= 0.5 and have <= share / 2 and t in TYPE_KNOB:
                add(f"type_{t}", f"{_pct(share)} of real queries are closest to '{t}' queries, which are only "
                    f"{_pct(have)} of the synthetic set — raise {TYPE_KNOB[t]}")
    return flags
