"""The real-question benchmark's sets, answer passages and statistics (benchmarks/real_questions.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rq():
    spec = importlib.util.spec_from_file_location("real_questions", REPO / "benchmarks" / "real_questions.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["real_questions"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_cached_sets_are_fixed_and_split_by_question(rq):
    total = 0
    for name in rq.CORPORA:
        rows = rq.load_set(name)
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)) and len(rows) >= 20
        assert len({r["question"].casefold() for r in rows}) == len(rows)
        for r in rows:
            assert r["split"] == rq._split_of(r["id"])  # the split is the id's hash, not an order
            assert r["question"] and len(r["answer"].split()) >= 8
        dev = sum(r["split"] == "dev" for r in rows) / len(rows)
        assert 0.15 < dev < 0.45
        total += len(rows)
    assert total >= 150


def test_faq_pages_never_reach_the_pipeline(rq):
    from domain_embed.curate.readers import _matches

    for name, c in rq.CORPORA.items():
        sources = {r["source"] for r in rq.load_set(name)}
        inside = c.docs_path in ("/usr/share/doc/sqlite3", "/usr/share/doc/git-doc")
        for s in sources:
            # debian's FAQ lives outside the Debian Reference folder; the others are excluded by name
            assert (not inside) or _matches(s, c.exclude), (name, s)


def test_answer_passages_carry_the_faq_title_not_the_question(rq, spec, base_cfg):
    rows = rq.load_set("git")
    passages, qrels = rq.answer_passages(rows, rq.CORPORA["git"], spec, base_cfg.curate)
    assert set(qrels) == {r["id"] for r in rows}
    by_id = {r["id"]: r for r in rows}
    for qid, docs in qrels.items():
        q = by_id[qid]["question"]
        for pid in docs:
            head = passages[pid].split("\n", 1)[0]
            assert head == rq.CORPORA["git"].faq_title
            assert q not in passages[pid]


def test_metrics_and_paired_bootstrap(rq):
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}}
    run = {"q1": {"x": 0.9, "a": 0.5}, "q2": {"c": 0.8, "y": 0.7, "b": 0.1}}
    pq = rq.per_query(qrels, run)
    assert pq["q1"]["mrr@10"] == 0.5 and pq["q2"]["mrr@10"] == 1.0
    assert pq["q2"]["recall@10"] == 1.0
    vals = np.array([0.0, 1.0] * 50)
    mean, lo, hi = rq.bootstrap(vals)
    assert mean == 0.5 and lo < 0.5 < hi and hi - lo < 0.3
    assert rq.bootstrap(np.zeros(40)) == (0.0, 0.0, 0.0)  # identical models: a paired interval of exactly 0


def test_table_pools_saved_results_question_by_question(rq, tmp_path, capsys):
    """`table --from a.json --from b.json`: each corpus's table, then one paired interval over all
    their questions together (what the issue's pooled criterion reads)."""
    import json

    def result(corpus, base, tuned):
        ids = [f"{corpus}-{i}" for i in range(len(base))]
        ci = lambda v: [float(np.mean(v)), float(np.min(v)), float(np.max(v))]  # noqa: E731
        m = lambda v: {"ndcg@10": ci(v), "recall@10": ci(v), "mrr@10": ci(v)}  # noqa: E731
        pair = {k: {"diff": [0.0, 0.0, 0.0], "wins": 0, "losses": 0} for k in ("ndcg@10", "recall@10", "mrr@10")}
        return {"results": [{"corpus": corpus, "split": "test", "n_queries": len(ids), "n_passages": 9,
                             "n_answer_passages": 3, "models": {"base": m(base), "tuned": m(tuned)},
                             "paired": {"tuned": pair},
                             "per_query": {"base": dict(zip(ids, base)), "tuned": dict(zip(ids, tuned))}}]}

    files = []
    for corpus, base, tuned in (("a", [0.2, 0.4, 0.6], [0.3, 0.4, 0.5]), ("b", [0.5, 0.5], [0.9, 0.7])):
        f = tmp_path / f"{corpus}.json"
        f.write_text(json.dumps(result(corpus, base, tuned)))
        files += ["--from", str(f)]
    assert rq.main(["table", *files]) == 0
    out = capsys.readouterr().out
    assert "### a — test split: 3 questions" in out and "### b — test split: 2 questions" in out
    pooled = next(line for line in out.splitlines() if line.startswith("**pooled"))
    # 5 questions; differences +0.1, 0, -0.1, +0.4, +0.2: mean +0.12, 3 wins and 1 loss
    assert "pooled (5 questions)" in pooled and "paired difference 0.120" in pooled and "wins/losses 3/1" in pooled
    with pytest.raises(SystemExit):
        rq.main(["table"])


def test_compare_decides_a_change_on_every_dev_question_pooled_with_a_guard_per_corpus(rq, tmp_path, capsys):
    """`compare --from change.json --against defaults.json`: the change's model against the reference's on the
    same questions, paired per corpus and pooled; kept only when the pooled difference is above 0 and no
    corpus's interval is wholly below 0 (a pooled gain must not hide a corpus it hurts)."""
    import json

    def save(name, per_corpus):
        res = [{"corpus": c, "split": "dev", "per_query": {"base": {q: 0.5 for q in t}, "tuned": t}}
               for c, t in per_corpus.items()]
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps({"results": res}))
        return str(f)

    big = {f"d{i}": 0.5 for i in range(30)}
    ref = save("ref", {"debian": big, "git": {"g1": 0.5, "g2": 0.5, "g3": 0.5}})
    # Debian +0.1 on every question; Git -0.2 on every question: pooled +0.073, but Git's interval is below 0
    hurts = save("hurts", {"debian": {q: 0.6 for q in big}, "git": {"g1": 0.3, "g2": 0.3, "g3": 0.3}})
    assert rq.main(["compare", "--from", hurts, "--against", ref, "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "| **pooled** | | 33 |" in out and "**+0.073 [" in out and "30 / 3" in out
    assert "-0.200 [-0.200, -0.200] (hurts)" in out and "do not keep**: it hurts git" in out
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["keep"] is False and saved["pooled"]["n"] == 33
    # the same Debian gain with Git mixed (one question better, one worse): kept
    mixed = save("mixed", {"debian": {q: 0.6 for q in big}, "git": {"g1": 0.7, "g2": 0.3, "g3": 0.5}})
    assert rq.main(["compare", "--from", mixed, "--against", ref]) == 0
    assert "**keep**" in capsys.readouterr().out
    # a reference over other questions, a missing corpus or model: refused with what to do
    other = save("other", {"debian": {"x": 0.5}, "git": {"g1": 0.5, "g2": 0.5, "g3": 0.5}})
    for args, says in (([mixed, other], "different questions"), ([mixed, save("nogit", {"debian": big})], "--against"),
                       ([mixed, ref, "--label", "mix-0.5"], "no 'mix-0.5' model")):
        with pytest.raises(SystemExit, match=says):
            rq.main(["compare", "--from", args[0], "--against", args[1], *args[2:]])
    with pytest.raises(SystemExit):
        rq.main(["compare", "--from", mixed])
    # a results file not written yet, or some other JSON: a usage error naming the file, not a traceback
    (tmp_path / "foreign.json").write_text("{}")
    for bad, says in ((tmp_path / "still-running.json", "no such results file"),
                      (tmp_path / "foreign.json", "not a results file")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            rq.main(["compare", "--from", str(bad), "--against", ref])
        err = capsys.readouterr().err
        assert e.value.code == 2 and says in err and bad.name in err
    capsys.readouterr()
    with pytest.raises(SystemExit):
        rq.main(["table", "--from", str(tmp_path / "still-running.json")])
    assert "no such results file" in capsys.readouterr().err


def test_seed_mean_averages_each_question_over_seeds_before_the_bootstrap(rq, capsys):
    """`--seeds`: the tuned model's score of a question is its mean over the pipeline seeds; base and BM25
    (which no seed changes) are the first run's; the paired interval resamples questions of those means."""
    qids = ["q1", "q2", "q3", "q4"]
    base = [0.2, 0.4, 0.6, 0.8]

    def result(seed, tuned):
        pqm = {"base": {q: {m: b for m in rq.METRICS} for q, b in zip(qids, base)},
               "bm25": {q: {m: 0.1 for m in rq.METRICS} for q in qids},
               "tuned": {q: {m: t for m in rq.METRICS} for q, t in zip(qids, tuned)}}
        models = {lb: {m: [float(np.mean([v[q][m] for q in qids])), 0.0, 1.0] for m in rq.METRICS}
                  for lb, v in pqm.items()}
        return {"corpus": "debian", "split": "dev", "n_queries": 4, "n_passages": 9, "n_answer_passages": 4,
                "run_dir": f"seed-{seed}", "models": models, "paired": {}, "per_query_metrics": pqm}

    runs = [result(1, [0.4, 0.4, 0.6, 0.6]), result(2, [0.2, 0.6, 0.6, 1.0])]
    mean = rq.seed_mean(runs, [1, 2])
    assert mean["per_query"]["tuned"] == pytest.approx({"q1": 0.3, "q2": 0.5, "q3": 0.6, "q4": 0.8})
    assert mean["models"]["base"]["ndcg@10"][0] == pytest.approx(0.5)
    assert mean["models"]["tuned"]["ndcg@10"][0] == pytest.approx(0.55)
    diff = mean["paired"]["tuned"]["ndcg@10"]
    assert diff["diff"][0] == pytest.approx(0.05) and (diff["wins"], diff["losses"]) == (2, 0)
    assert diff["diff"][1] <= 0.05 <= diff["diff"][2]
    assert mean["per_seed_ndcg@10"]["tuned"] == pytest.approx([0.5, 0.6])
    out = rq.table([mean])
    assert "mean over pipeline seeds 1, 2" in out and "tuned nDCG@10 by seed: 1 0.500, 2 0.600" in out


@pytest.mark.parametrize("args, says", [
    (["--seeds", "42,x"], "give whole numbers"),
    (["--seeds", "42,42"], "repeats a seed"),
    (["--seeds", "42,43", "seed=7"], "drop the seed= override"),
    (["--seeds", "42,43", "--run-dir", "somewhere"], "give --run-root instead of --run-dir"),
])
def test_bad_seeds_are_refused_with_what_to_do(rq, capsys, args, says):
    with pytest.raises(SystemExit) as e:
        rq.main(["score", "--corpus", "debian", *args])
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_an_interpolated_mix_is_remade_when_the_tuned_weights_are_not_the_ones_it_was_made_from(rq, minilm_path,
                                                                                                tmp_path):
    import json
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    def tuned(name: str, shift: float) -> Path:
        d = tmp_path / name
        model = AutoModel.from_pretrained(str(minilm_path))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(shift)
        model.save_pretrained(str(d), safe_serialization=True)
        for f in minilm_path.glob("*"):          # tokenizer files beside the weights, as a tuned model has
            if f.is_file() and not (d / f.name).exists():
                shutil.copy(f, d / f.name)
        return d

    def word_embeddings(d: Path) -> torch.Tensor:
        return load_file(str(d / "model.safetensors"))["embeddings.word_embeddings.weight"]

    base = word_embeddings(minilm_path) if (minilm_path / "model.safetensors").is_file() else None
    a, b = tuned("a", 0.5), tuned("b", -0.5)
    out = tmp_path / "realq-interp"
    mix_a = word_embeddings(rq.interpolated(minilm_path, a, 0.5, out))
    again = rq.interpolated(minilm_path, a, 0.5, out)          # the same weights: the mix is reused
    assert json.loads((again / "mix_source.json").read_text())["tuned"] == str(a.resolve())
    mix_b = word_embeddings(rq.interpolated(minilm_path, b, 0.5, out))
    # halfway between the base and +0.5 / -0.5 everywhere: the two mixes differ by 0.5, not 0
    assert torch.allclose(mix_a - mix_b, torch.full_like(mix_a, 0.5), atol=1e-5)
    if base is not None:
        assert torch.allclose(mix_b, base - 0.25, atol=1e-5)


def test_ceiling_tunes_the_base_on_the_dev_questions_own_answers(rq, tmp_path, capsys):
    """The ceiling reference (`real_questions.py ceiling`) really trains: on the dev questions it was tuned
    on, each question's own answer moves up against the other questions' answers; the test split is
    not touched. And its bad uses are refused."""
    from domain_embed.config import EncodingSpec, load_config
    from domain_embed.inference import inference_encoder

    run_dir = tmp_path / "realq-git"
    run_dir.mkdir()
    cfg = load_config(run_dir, ["train.batch_size=4"], save=True)
    out = rq.ceiling("git", run_dir, epochs=3)
    assert (out / "model.safetensors").is_file() and not out.with_name("model.tmp").exists()

    spec = EncodingSpec.from_config(cfg)
    rows = rq.load_set("git")
    passages, qrels = rq.answer_passages(rows, rq.CORPORA["git"], spec, cfg.curate)
    dev = [r for r in rows if r["split"] == "dev"]
    pids = sorted({p for r in dev for p in qrels[r["id"]]})

    def margin(model_path) -> float:
        enc = inference_encoder(spec, cfg.model, model_path=model_path, allow_int8=False, log=lambda m: None,
                                onnx_root=tmp_path / "graphs" if model_path is not None else None)
        q = np.asarray(enc.encode([r["question"] for r in dev], "query"))
        p = np.asarray(enc.encode([passages[x] for x in pids], "passage"))
        s = q @ p.T
        own = np.array([[x in qrels[r["id"]] for x in pids] for r in dev])
        return float(np.mean([s[i][own[i]].max() - s[i][~own[i]].max() for i in range(len(dev))]))

    tuned_margin, base_margin = margin(out), margin(None)
    assert tuned_margin > base_margin + 0.05   # measured: 0.20 -> 0.31

    for argv, says in ((["ceiling", "--corpus", "git", "--split", "dev", "--run-dir", str(run_dir)], "--split test"),
                       (["ceiling", "--corpus", "git", "--run-dir", str(tmp_path / "none")], "run the pipeline first")):
        with pytest.raises(SystemExit):
            rq.main(argv)
        assert says in capsys.readouterr().err


def test_a_later_seed_starts_from_the_first_seeds_curate_and_embeddings(rq, tmp_path):
    import shutil

    from domain_embed.config import load_config
    from domain_embed.rundir import run_stage
    from domain_embed.stages import STAGES

    docs = tmp_path / "docs"
    docs.mkdir()
    for page in sorted((REPO / "data" / "sample").glob("*.html"))[:2]:
        shutil.copy(page, docs)
    first, later = tmp_path / "seed-42" / "realq-x", tmp_path / "seed-43" / "realq-x"
    run_stage(STAGES["curate"], first, load_config(first, [f"corpus.path={docs}", "seed=42"]), STAGES, quiet=True)
    (first / "embeddings" / "passage-abc").mkdir(parents=True)   # a store the first seed embedded
    assert rq.share_seed_independent(first, later)
    assert (later / "embeddings" / "passage-abc").is_dir() and not list(later.glob(".*partial"))
    m = run_stage(STAGES["curate"], later, load_config(later, [f"corpus.path={docs}", "seed=43"]), STAGES, quiet=True)
    assert m.get("skipped"), "the seed changed curate's inputs: the shared output was redone"
    assert not rq.share_seed_independent(first, later)   # never over a run directory's own output


def test_oracle_scores_every_test_question_once_by_a_model_that_never_trained_on_it(rq, tmp_path, monkeypatch):
    """`ceiling --oracle-folds K`: each fold's model trains on the dev questions plus the other folds and
    scores only its own fold, so the table covers every test question and none is scored by a model that
    saw its answer. Each result says which documentation passage turns up in the most top 10s (the hub)."""
    import json

    from domain_embed.config import load_config

    run_dir = tmp_path / "realq-git"
    (run_dir / "curate").mkdir(parents=True)
    load_config(run_dir, ["train.batch_size=4"], save=True)
    docs = ["git stash saves local modifications away and reverts the working directory to match HEAD.",
            "git rebase reapplies commits on top of another base tip.",
            "git config sets repository or global options, such as user.name and user.email."]
    (run_dir / "curate" / "chunks.jsonl").write_text("".join(
        json.dumps({"id": f"c_{i}", "doc_id": "d", "text": t, "title": "Git", "source": "x.html", "n_tokens": 20}) + "\n"
        for i, t in enumerate(docs)))
    rows = rq.load_set("git")
    test = {r["id"] for r in rows if r["split"] == "test"}
    dev = {r["id"] for r in rows if r["split"] == "dev"}
    folds = rq.oracle_folds(rows, 2)
    assert set().union(*folds) == test and not folds[0] & folds[1] and rq.oracle_folds(rows[::-1], 2) == folds

    trained, real = [], rq.ceiling
    from domain_embed.inference import onnx_cache_root

    cache = onnx_cache_root(load_config(run_dir, [], save=False).model)
    before = set(cache.iterdir()) if cache.is_dir() else set()

    def recording(*args, **kw):   # the real training, with what it trained on noted
        trained.append(set(kw["train_ids"]))
        return real(*args, **kw)

    monkeypatch.setattr(rq, "ceiling", recording)
    res = rq.oracle("git", run_dir, 2, epochs=1)
    assert trained == [dev | folds[1], dev | folds[0]]
    assert res["n_queries"] == len(test) and set(res["per_query"]["oracle"]) == test
    assert set(res["per_query"]["base"]) == test and res["paired"]["oracle"]["ndcg@10"]["diff"]
    assert "oracle − base (paired)" in rq.table([res])
    assert set(res["per_query"]["oracle-mix-0.7"]) == test   # and as the pipeline ships it (train.base_mix)
    for i in range(2):
        assert (run_dir / "realq-ceiling" / f"oracle-2-{i}" / "model.safetensors").is_file()
    # the folds' graphs stay with the run; the machine's cache keeps base models only (it kept every fold's ~90 MB)
    new = set(cache.iterdir()) - before if cache.is_dir() else set()
    leaked = [d for d in new if (d / "build.json").is_file() and str(run_dir) in (d / "build.json").read_text()]
    assert not leaked, leaked
    assert len(list((run_dir / "embeddings" / "onnx").glob("*/model.onnx"))) >= 2

    # the hub line: one documentation passage in several questions' top 10
    run = {"q1": {"c_0": 0.9, "a": 0.5}, "q2": {"c_0": 0.8, "c_1": 0.7}, "q3": {"b": 0.9}}
    assert rq.hub(run, {"a", "b"}, 3) == {"passage": "c_0", "questions": 2, "share": 0.667}
    assert rq.hub({}, set(), 0)["questions"] == 0
