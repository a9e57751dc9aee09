"""InfoNCE masking and the duplicate-free, resumable batch plan (no model needed)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from domain_embed.errors import UserError
from domain_embed.train.batching import BatchPlan, Example
from domain_embed.train.info_nce import info_nce, passage_to_query


def test_info_nce_scores_own_group_only_without_in_batch_negatives():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(3, 8), dim=-1)
    p = F.normalize(torch.randn(9, 8), dim=-1)  # 3 queries x (1 pos + 2 neg)
    ids = torch.arange(9)
    pos_sets = torch.tensor([[0], [3], [6]])
    got = info_nce(q, p, ids, pos_sets, group=3, temperature=0.05, in_batch=False)
    want = sum(F.cross_entropy((q[i] @ p[3 * i : 3 * i + 3].T)[None] / 0.05, torch.tensor([0])) for i in range(3)) / 3
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    full = info_nce(q, p, ids, pos_sets, group=3, temperature=0.05, in_batch=True)
    assert full.item() > got.item()  # more negatives, larger loss


def test_info_nce_never_treats_another_positive_as_a_negative():
    torch.manual_seed(1)
    q = F.normalize(torch.randn(2, 8), dim=-1)
    p = F.normalize(torch.randn(4, 8), dim=-1)  # group of 2 per query
    ids = torch.tensor([10, 11, 12, 13])
    # query 0's positives are 10 (its target) AND 12 (query 1's target passage)
    pos_sets = torch.tensor([[10, 12], [12, -1]])
    got = info_nce(q, p, ids, pos_sets, group=2, temperature=0.1)
    l0 = q[0] @ p.T / 0.1
    l0_masked = torch.cat([l0[:2], l0[3:]])  # column of passage 12 removed
    l1 = q[1] @ p.T / 0.1
    want = (F.cross_entropy(l0_masked[None], torch.tensor([0])) + F.cross_entropy(l1[None], torch.tensor([2]))) / 2
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert math.isfinite(got.item())


def _examples(n=24, n_passages=30):
    # each query: positive i, negatives from a small shared pool so collisions are common
    return [Example(f"q{i}", (i,), ((i + 1) % n, (i + 2) % n, 25 + i % 5)) for i in range(n)], n_passages


def test_passage_to_query_punishes_a_hub_and_skips_queries_that_share_the_passage():
    """train.symmetric: each target passage must pick its own query out of the batch's queries. A passage
    as close to every query as to its own (a hub) costs log(B); one nearest its own query costs little."""
    B, group = 4, 2
    q = torch.eye(8)[:B]
    own = torch.zeros(B * group, 8)
    own[::group] = q                                       # each target passage is its own query
    ids = torch.arange(B * group)
    pos_sets = ids[::group][:, None]
    assert passage_to_query(q, own, ids, pos_sets, group, temperature=0.05).item() < 1e-3
    hub = own.clone()
    hub[::group] = F.normalize(torch.ones(B, 8) * (torch.arange(8) < B), dim=-1)  # equally close to all four
    assert passage_to_query(q, hub, ids, pos_sets, group, temperature=0.05).item() == pytest.approx(math.log(B), rel=1e-4)
    # query 1 also holds query 0's target among its positives: it is not a negative for that passage
    shared = torch.tensor([[0, -1], [2, 0], [4, -1], [6, -1]])
    logits = (hub[::group] @ q.T) / 0.05
    want0 = F.cross_entropy(logits[0, [0, 2, 3]][None], torch.tensor([0]))
    want = (want0 + sum(F.cross_entropy(logits[i][None], torch.tensor([i])) for i in range(1, B))) / B
    got = passage_to_query(q, hub, ids, shared, group, temperature=0.05)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # with an offset (this rank's block in gathered passages), the targets are this rank's
    two = torch.cat([torch.zeros_like(own), own])
    assert passage_to_query(q, two, torch.arange(2 * B * group), pos_sets + B * group, group, offset=B,
                            temperature=0.05).item() < 1e-3


def test_batches_hold_no_duplicate_passage_and_no_other_positive():
    ex, n = _examples()
    plan = BatchPlan(ex, n, global_batch=4, num_negatives=3, seed=7)
    for e in range(3):
        assert plan.epoch(e), "no batch planned"
        for batch in plan.epoch(e):
            passages = [p for it in batch for p in (it.positive, *it.negatives)]
            assert len(passages) == len(set(passages)), "a passage appears twice in one batch"
            positives = {p for it in batch for p in ex[it.example].positives}
            for it in batch:
                others = set(passages) - {it.positive, *it.negatives}
                assert not others & set(ex[it.example].positives)
            assert len(positives) == len(batch)


def test_plan_is_deterministic_and_addressable_by_global_index():
    ex, n = _examples()
    a = BatchPlan(ex, n, 4, 3, seed=3)
    b = BatchPlan(ex, n, 4, 3, seed=3)
    flat = [bt for e in range(2) for bt in a.epoch(e)]
    assert [b.batch(i) for i in range(len(flat))] == flat   # what a resumed run asks for
    assert BatchPlan(ex, n, 4, 3, seed=4).epoch(0) != a.epoch(0)


def test_short_queries_are_topped_up_with_random_non_positives():
    ex = [Example(f"q{i}", (i,), ()) for i in range(8)]
    plan = BatchPlan(ex, 40, 2, 3, seed=0)
    for batch in plan.epoch(0):
        for it in batch:
            assert len(it.negatives) == 3 and it.positive not in it.negatives


def test_too_few_queries_for_one_batch_is_a_user_error():
    ex, n = _examples(3)
    with pytest.raises(UserError, match="batch_size"):
        BatchPlan(ex, n, 8, 2, seed=0)


def test_fit_plan_shrinks_batch_and_negatives_for_tiny_data():
    from domain_embed.train.batching import fit_plan

    # 3 passages, 3 queries sharing negatives: 4 negatives cannot fit, nor can a batch of 8
    ex = [Example(f"q{i}", (i,), ((i + 1) % 3,)) for i in range(3)]
    msgs = []
    plan = fit_plan(ex, 3, per_device=8, world=1, num_negatives=4, seed=0, log=msgs.append)
    assert plan.k == 2 and plan.global_batch < 8 and len(msgs) == 2
    for batch in plan.epoch(0):
        passages = [p for it in batch for p in (it.positive, *it.negatives)]
        assert len(passages) == len(set(passages))


def test_base_kl_is_zero_for_the_base_itself_and_scores_the_same_columns_as_info_nce():
    from domain_embed.train.info_nce import base_kl

    torch.manual_seed(2)
    q = F.normalize(torch.randn(3, 8), dim=-1)
    p = F.normalize(torch.randn(9, 8), dim=-1)
    assert base_kl(q, p, q, p, group=3).item() == pytest.approx(0.0, abs=1e-6)
    qs = F.normalize(q + 0.3 * torch.randn(3, 8), dim=-1).requires_grad_(True)
    kl = base_kl(qs, p, q, p, group=3, temperature=0.05, in_batch=False)
    want = sum(F.kl_div(F.log_softmax(qs[i] @ p[3 * i : 3 * i + 3].T / 0.05, -1),
                        F.log_softmax(q[i] @ p[3 * i : 3 * i + 3].T / 0.05, -1), reduction="sum", log_target=True)
               for i in range(3)) / 3
    assert kl.item() > 0 and kl.item() == pytest.approx(want.item(), rel=1e-5)
    kl.backward()
    assert qs.grad is not None and float(qs.grad.abs().sum()) > 0


def _check_batch(batch, ex):
    passages = [p for it in batch for p in (it.positive, *it.negatives)]
    assert len(passages) == len(set(passages)), "a passage appears twice in one batch"
    for it in batch:
        assert it.positive in ex[it.example].positives
        others = set(passages) - {it.positive, *it.negatives}
        assert not others & set(ex[it.example].positives), "another query's positive is in the batch"


def _few_documents():
    # the notebook's tiny run: 11 queries over 7 chunks of 12, each chunk the others' hard negative, 2 pairs of
    # queries sharing a positive. Before negatives were re-drawn, epoch 2 raised at a batch of 4 and killed the run.
    pos = [0, 1, 2, 3, 4, 5, 5, 6, 6, 1, 1]
    ex = [Example(f"q{i}", (p,), tuple(n for n in ((p + 1) % 7, (p + 3) % 7, (p + 5) % 7, 7 + i % 5) if n != p))
          for i, p in enumerate(pos)]
    return ex, 12


def test_overlapping_negatives_are_redrawn_so_every_epoch_packs():
    ex, n = _few_documents()
    plan = BatchPlan(ex, n, global_batch=4, num_negatives=2, seed=42)
    for e in range(12):
        assert plan.epoch(e), f"epoch {e} packed no batch"
        for batch in plan.epoch(e):
            assert len(batch) == 4
            _check_batch(batch, ex)
    assert plan.redrawn > 0 and plan.repeated_epochs == []
    assert BatchPlan(ex, n, 4, 2, seed=42).epoch(5) == plan.epoch(5)  # still a pure function of (seed, epoch)


def test_redrawing_only_adds_batches_the_first_pass_could_not_fill():
    class FirstPassOnly(BatchPlan):   # the planner before negatives were re-drawn
        def _redraw(self, batch, rng):
            return None

    ex, n = _examples(24, 36)
    for seed in range(3):
        old, new = FirstPassOnly(ex, n, 4, 3, seed=seed), BatchPlan(ex, n, 4, 3, seed=seed)
        for e in range(3):
            assert new.epoch(e)[: len(old.epoch(e))] == old.epoch(e)   # a run's batches stay as they were
        assert new.batches_in(3) > old.batches_in(3) and new.redrawn > 0


def test_an_epoch_that_cannot_pack_repeats_the_previous_one_with_a_warning():
    class NothingPacksAfterEpoch0(BatchPlan):   # fault injection: the real packing is tested above
        def _pack(self, items, rng):
            return super()._pack(items, rng) if not self._epochs else []

    ex, n = _examples()
    msgs = []
    plan = NothingPacksAfterEpoch0(ex, n, 4, 3, seed=0, log=msgs.append)
    assert plan.epoch(1) == plan.epoch(0) and plan.repeated_epochs == [1]
    assert plan.batches_in(3) == 3 * len(plan.epoch(0))
    assert len(msgs) == 2 and "repeats epoch 0" in msgs[0]
