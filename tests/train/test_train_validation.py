"""The bounded validation corpus (train.val_corpus_size) and the run-time estimate's pieces."""

from __future__ import annotations

import pytest

from domain_embed.evaluate.retrieval import load_beir
from domain_embed.train.validation import bounded_validation
from split_fixture import write_split


@pytest.fixture(scope="module")
def val_run(tmp_path_factory):
    return write_split(tmp_path_factory.mktemp("val") / "run")


@pytest.fixture(scope="module")
def val(val_run):
    return load_beir(val_run / "split" / "val_beir", "dev", "val")


def test_bounded_corpus_keeps_every_positive_and_samples_the_same_distractors(val):
    positives = {d for q in val.query_ids for d, r in val.qrels[q].items() if r > 0}
    assert len(val.corpus_ids) > len(positives) + 5
    a, counts = bounded_validation(val, 5, seed=42)
    b, _ = bounded_validation(val, 5, seed=42)
    c, _ = bounded_validation(val, 5, seed=7)
    assert positives <= set(a.corpus_ids)
    assert len(a.corpus_ids) == len(positives) + 5 == counts["val_corpus"]
    assert counts["val_corpus_full"] == len(val.corpus_ids) and counts["val_positives"] == len(positives)
    assert a.corpus_ids == b.corpus_ids, "the distractor sample must be fixed for a seed"
    assert a.corpus_ids != c.corpus_ids, "a different seed should sample other distractors"
    # texts stay aligned with their ids, queries and qrels are untouched
    text_of = dict(zip(val.corpus_ids, val.corpus_texts))
    assert all(text_of[i] == t for i, t in zip(a.corpus_ids, a.corpus_texts))
    assert a.query_ids == val.query_ids and a.qrels == val.qrels


def test_mined_negatives_are_kept_and_zero_means_the_whole_corpus(val):
    positives = {d for q in val.query_ids for d, r in val.qrels[q].items() if r > 0}
    neg = next(i for i in val.corpus_ids if i not in positives)
    a, _ = bounded_validation(val, 1, seed=0, negatives=[neg])
    assert neg in a.corpus_ids and len(a.corpus_ids) == len(positives) + 2
    full, counts = bounded_validation(val, 0, seed=0)
    assert full.corpus_ids == val.corpus_ids and counts["val_corpus"] == len(val.corpus_ids)
    big, _ = bounded_validation(val, 10**6, seed=0)
    assert big.corpus_ids == val.corpus_ids


def test_the_positives_documents_stay_whole_as_hard_distractors(val, val_run):
    from domain_embed.rundir import read_jsonl

    docs = [r["title"] for r in read_jsonl(val_run / "split" / "val_beir" / "corpus.jsonl")]
    positives = {d for q in val.query_ids for d, r in val.qrels[q].items() if r > 0}
    pos_title = next(docs[i] for i, cid in enumerate(val.corpus_ids) if cid in positives)
    # two training passages said to come from a positive's document: they must stay
    others = [i for i, cid in enumerate(val.corpus_ids) if cid not in positives][:2]
    for i in others:
        docs[i] = pos_title
    a, counts = bounded_validation(val, 2, seed=1, documents=docs)
    kept = set(a.corpus_ids)
    assert positives <= kept and {val.corpus_ids[i] for i in others} <= kept
    assert len(kept) == len(positives) + 2 + 2 == counts["val_corpus"]


def _split_examples(tmp_path):
    """The fixture split's training passages and its queries as training examples (no negatives)."""
    from domain_embed.rundir import read_jsonl
    from domain_embed.train.batching import load_examples

    run = write_split(tmp_path / "run")
    corpus = list(read_jsonl(run / "split" / "train_corpus.jsonl"))
    qa = list(read_jsonl(run / "split" / "train_qa.jsonl"))
    mined = [{"query": r["question"], "pos": [{"id": s} for s in r["segment_ids"]], "neg": []} for r in qa]
    examples, _ = load_examples(mined, [c["id"] for c in corpus])
    return [c["text"] for c in corpus], examples


def test_probe_times_a_real_step_without_changing_the_weights(tmp_path, base_cfg):
    import torch
    from transformers import AutoTokenizer

    from domain_embed.config import EncodingSpec
    from domain_embed.train.batching import BatchPlan, PlannedBatches, make_collate
    from domain_embed.train.bi_encoder import BiEncoder
    from domain_embed.train.progress import estimate_line, probe_step

    texts, examples = _split_examples(tmp_path)
    spec = EncodingSpec.from_config(base_cfg)
    tok = AutoTokenizer.from_pretrained(spec.model_path)
    module = BiEncoder(spec, base_cfg.train, tok, 10)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    plan = BatchPlan(examples, len(texts), 2, 1, 0)
    collate = make_collate(tok, spec, 16)
    t = probe_step(module, PlannedBatches(plan, texts, collate, 0, 1, 2, lambda: 0), n=2, rows=1)
    assert t.forward_s > 0 and t.backward_s > 0 and t.collate_s >= 0
    assert t.tokens <= 2 * 64 + 2 * 2 * 16  # queries up to 64 tokens (spec), passages cut to 16 for training
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert all(p.grad is None for p in module.parameters())
    assert torch.equal(rng, torch.get_rng_state())
    line = estimate_line(93, 1, t, 4, 2000, 0.01, 1)
    assert line.startswith("93 steps at about") and "4 validations of 2000 passages" in line and "about" in line


def test_durations_read_as_a_person_would_say_them():
    from domain_embed.train.progress import format_duration

    assert format_duration(5) == "5.0 s" and format_duration(42) == "42 s"
    assert format_duration(372) == "6 min" and format_duration(4000) == "1 h 6 min"


def test_distill_base_term_is_zero_at_the_base_grows_as_weights_move_and_stays_out_of_checkpoints(tmp_path,
                                                                                                  base_cfg):
    """The real MiniLM and the real regulariser: the frozen base is no submodule (so no checkpoint, optimiser
    or shipped weight holds it), the term vanishes while the tuned weights equal the base's, and only the
    tuned copy gets gradients."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from domain_embed.config import EncodingSpec
    from domain_embed.train.batching import BatchPlan, PlannedBatches, make_collate
    from domain_embed.train.bi_encoder import BiEncoder

    texts, examples = _split_examples(tmp_path)
    spec = EncodingSpec.from_config(base_cfg)
    tok = AutoTokenizer.from_pretrained(spec.model_path)
    tcfg = OmegaConf.merge(base_cfg.train, {"distill_base": 1.0})
    plain = BiEncoder(spec, base_cfg.train, tok, 10)
    module = BiEncoder(spec, tcfg, tok, 10)
    assert set(module.state_dict()) == set(plain.state_dict())
    assert len(list(module.parameters())) == len(list(plain.parameters()))
    batch = next(iter(PlannedBatches(BatchPlan(examples, len(texts), 3, 2, 0), texts, make_collate(tok, spec, 32),
                                     0, 1, 1, lambda: 0)))
    module.model.eval()  # no dropout: the tuned copy computes exactly what the base does
    group = batch["p_input_ids"].shape[0] // batch["q_input_ids"].shape[0]

    def term():
        q = module.embed(batch["q_input_ids"], batch["q_attention_mask"], normalize=False)
        p = module.embed(batch["p_input_ids"], batch["p_attention_mask"], normalize=False)
        return module.base_term(batch, q, p, group, 0, False)

    at_base = term().item()
    assert at_base == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for name, param in module.model.named_parameters():
            if "encoder.layer." in name and param.dim() == 2:
                param.add_(0.05 * torch.randn_like(param))
    moved = term()
    assert moved.item() > 1e-3, moved.item()
    moved.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in module.model.parameters())
    assert all(p.grad is None for p in module._base[0].parameters())


def test_the_validation_line_rounds_and_says_when_the_shipped_step_scored_below_the_base():
    """The demo's log read "base 0.396247 -> best 0.38238248229026794 (step 6)", a tuned score below the base's
    with nothing said of it."""
    from domain_embed.train.stage import validation_line

    below = {"steps": 6, "base_val_ndcg@10": 0.396247, "best_val_ndcg@10": 0.38238248229026794, "best_step": 6,
             "val_queries": 7}
    assert validation_line(below) == ("trained 6 steps; validation nDCG@10 base 0.3962 -> best 0.3824 (step 6); below "
                                      "the base on the 7 validation queries -- the held-out evaluation and its quality "
                                      "gate decide")
    above = {**below, "best_val_ndcg@10": 0.7541074156761169}
    assert validation_line(above) == "trained 6 steps; validation nDCG@10 base 0.3962 -> best 0.7541 (step 6)"
    assert validation_line({**below, "best_val_ndcg@10": None, "best_step": None}) == (
        "trained 6 steps; validation nDCG@10 base 0.3962; the last step is shipped unvalidated (no earlier trained "
        "step to choose between) -- the held-out evaluation scores it")
    assert validation_line({**below, "base_val_ndcg@10": None, "best_val_ndcg@10": None, "best_step": None}) == \
        "trained 6 steps; no validation (train.val_every_n_steps=0, or no validation split)"
