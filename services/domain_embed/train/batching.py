"""Training examples and a deterministic, resumable batch plan with no duplicate passages per batch.

A *global batch* (``per_device * world_size`` examples) never holds the same passage twice and never
holds a passage that is a positive of another query in it: either would make the in-batch softmax
push a query away from its own positive. Each rank takes its slice of the global batch, so in-batch
negatives gathered across devices are duplicate-free too.

The plan is a pure function of (seed, epoch), and the dataset starts at any micro-batch index, so a
run resumed from a checkpoint sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..errors import UserError


@dataclass(frozen=True)
class Example:
    query: str
    positives: tuple[int, ...]     # corpus rows
    negatives: tuple[int, ...]     # corpus rows, hardest first


def load_examples(mined_rows: list[dict], corpus_ids: list[str]) -> tuple[list[Example], int]:
    row_of = {cid: i for i, cid in enumerate(corpus_ids)}
    out, dropped = [], 0
    for r in mined_rows:
        pos = tuple(row_of[p["id"]] for p in r.get("pos", []) if p["id"] in row_of)
        neg = tuple(row_of[n["id"]] for n in r.get("neg", []) if n["id"] in row_of)
        if not pos or not str(r.get("query", "")).strip():
            dropped += 1
            continue
        out.append(Example(str(r["query"]), pos, neg))
    return out, dropped


@dataclass(frozen=True)
class PlannedItem:
    example: int
    positive: int
    negatives: tuple[int, ...]


class BatchPlan:
    """Epoch-by-epoch plan of global batches; ``batch(b)`` is the b-th global micro-batch of the run.

    Packing degrades rather than fails on small or overlapping data (a few documents whose chunks are
    each other's hard negatives): a query whose *negatives* collide with the batch gets those
    negatives re-drawn (its next mined ones, then random passages) before it is deferred; an epoch
    whose order packs no batch is re-shuffled; and an epoch that still packs none repeats the
    previous epoch, with a warning. Only epoch 0 can fail, and ``fit_plan`` then shrinks the batch.
    """

    RESHUFFLES = 8

    def __init__(self, examples: list[Example], n_passages: int, global_batch: int, num_negatives: int, seed: int,
                 log: Callable[[str], Any] | None = None):
        if len(examples) < global_batch:
            raise UserError(f"{len(examples)} training queries cannot fill one batch of {global_batch} "
                            f"(train.batch_size x devices); lower train.batch_size or synthesize more queries")
        self.examples = examples
        self.n_passages = n_passages
        self.global_batch = global_batch
        self.k = num_negatives
        self.seed = seed
        self.log = log
        self.redrawn = 0                  # items whose colliding negatives were re-drawn
        self.repeated_epochs: list[int] = []
        self._epochs: list[list[list[PlannedItem]]] = []

    def _free_passages(self, want: int, banned: set[int], rng: np.random.Generator,
                       preferred: tuple[int, ...] = ()) -> list[int]:
        """Up to ``want`` passages not in ``banned``: ``preferred`` first (in order), then random ones."""
        out: list[int] = []
        for c in preferred:
            if len(out) == want:
                return out
            if c not in banned:
                out.append(c)
                banned.add(c)
        tries = 0
        while len(out) < want and tries < 100 * self.k:  # guessing is cheap on a real corpus
            c = int(rng.integers(self.n_passages))
            tries += 1
            if c not in banned:
                out.append(c)
                banned.add(c)
        if len(out) < want:  # tiny corpus: walk a permutation instead of guessing
            for c in rng.permutation(self.n_passages):
                if len(out) == want:
                    break
                if int(c) not in banned:
                    out.append(int(c))
                    banned.add(int(c))
        return out

    def _items(self, epoch: int, rng: np.random.Generator) -> list[PlannedItem]:
        items: list[PlannedItem] = []
        for i in rng.permutation(len(self.examples)):
            ex = self.examples[int(i)]
            pos = ex.positives[epoch % len(ex.positives)]   # cycle through a query's positives
            negs = list(ex.negatives[: self.k])
            negs += self._free_passages(self.k - len(negs), set(ex.positives) | set(negs), rng)  # top up short ones
            if len(negs) < self.k:
                raise UserError(f"the training corpus has too few passages for train.num_negatives={self.k}")
            items.append(PlannedItem(int(i), pos, tuple(negs)))
        return items

    def _redraw(self, batch: list[PlannedItem], rng: np.random.Generator) -> list[PlannedItem] | None:
        """``batch`` (queries with disjoint positives) with every negative that is another item's passage or any
        query's positive replaced: by the query's next mined negatives, then random passages. None if too few
        passages are free."""
        used = {p for it in batch for p in self.examples[it.example].positives}
        out: list[PlannedItem] = []
        changed = 0
        for it in batch:
            ex = self.examples[it.example]
            keep = [n for n in it.negatives if n not in used]
            used.update(keep)
            fresh = self._free_passages(self.k - len(keep), used | set(it.negatives), rng,
                                        preferred=ex.negatives[self.k:])
            if len(keep) + len(fresh) < self.k:
                return None
            used.update(fresh)
            out.append(it if not fresh else PlannedItem(it.example, it.positive, tuple(keep + fresh)))
            changed += bool(fresh)
        self.redrawn += changed
        return out

    def _pack(self, items: list[PlannedItem], rng: np.random.Generator) -> list[list[PlannedItem]]:
        batches: list[list[PlannedItem]] = []
        pool = items
        while len(pool) >= self.global_batch:
            batch: list[PlannedItem] = []
            seen: set[int] = set()        # passages in the batch
            batch_pos: set[int] = set()   # every positive of every query in the batch
            rest: list[PlannedItem] = []
            for it in pool:               # first pass: items as planned, in order
                ex = self.examples[it.example]
                passages = {it.positive, *it.negatives}
                if (len(batch) == self.global_batch or passages & seen or set(ex.positives) & seen
                        or passages & batch_pos):
                    rest.append(it)
                else:
                    batch.append(it)
                    seen |= passages
                    batch_pos |= set(ex.positives)
            if len(batch) < self.global_batch:
                # second pass: only positives must not clash; clashing negatives are re-drawn
                extra, deferred = [], []
                for it in rest:
                    ps = set(self.examples[it.example].positives)
                    if len(batch) + len(extra) < self.global_batch and not ps & batch_pos:
                        extra.append(it)
                        batch_pos |= ps
                    else:
                        deferred.append(it)
                fixed = self._redraw(batch + extra, rng) if len(batch) + len(extra) == self.global_batch else None
                if fixed is not None:
                    batch, rest = fixed, deferred
            if len(batch) < self.global_batch:
                break  # what is left cannot form a duplicate-free batch; it comes back next epoch
            batches.append(batch)
            pool = rest
        return batches

    def _plan_epoch(self, epoch: int) -> list[list[PlannedItem]]:
        for attempt in range(self.RESHUFFLES):
            rng = np.random.default_rng([self.seed, epoch] + ([attempt] if attempt else []))
            batches = self._pack(self._items(epoch, rng), rng)
            if batches:
                return batches
        if epoch == 0:
            raise UserError("no duplicate-free batch could be formed (queries share too many passages); "
                            "lower train.batch_size or train.num_negatives")
        self.repeated_epochs.append(epoch)
        if self.log:
            self.log(f"[train] epoch {epoch} packs no duplicate-free batch of {self.global_batch}; "
                     f"it repeats epoch {epoch - 1} (more queries or a smaller train.batch_size avoid this)")
        return self._epochs[epoch - 1]

    def epoch(self, e: int) -> list[list[PlannedItem]]:
        while len(self._epochs) <= e:
            self._epochs.append(self._plan_epoch(len(self._epochs)))
        return self._epochs[e]

    def batch(self, b: int) -> list[PlannedItem]:
        e = 0
        while b >= len(self.epoch(e)):
            b -= len(self.epoch(e))
            e += 1
        return self.epoch(e)[b]

    def batches_in(self, epochs: int) -> int:
        return sum(len(self.epoch(e)) for e in range(epochs))


def make_collate(tokenizer, spec, max_passage_length: int | None = None) -> Callable[[list[str], list[str]], dict]:
    """Tokenise queries and passages with the spec's prefixes and per-type max lengths.

    Padding is dynamic (to the longest text of the batch, not to the max length). Training may cut
    passages shorter than the spec does (``max_passage_length``, from ``train.max_passage_length``).
    """
    p_len = int(max_passage_length or spec.max_passage_length)

    def collate(queries: list[str], passages: list[str]) -> dict[str, torch.Tensor]:
        q = tokenizer([spec.query_prefix + t for t in queries], max_length=spec.max_query_length, truncation=True,
                      padding=True, return_tensors="pt")
        p = tokenizer([spec.passage_prefix + t for t in passages], max_length=p_len,
                      truncation=True, padding=True, return_tensors="pt")
        return {"q_input_ids": q["input_ids"], "q_attention_mask": q["attention_mask"],
                "p_input_ids": p["input_ids"], "p_attention_mask": p["attention_mask"]}

    return collate


def fit_plan(examples: list[Example], n_passages: int, per_device: int, world: int, num_negatives: int, seed: int,
             log=print) -> BatchPlan:
    """The configured plan, or -- on data too small for it -- the largest batch and negative count that work.

    Small runs (a handful of documents, a CI smoke test) should train, with a warning, rather than fail.
    """
    k = max(0, min(num_negatives, min(n_passages - len(e.positives) for e in examples)))
    if k < num_negatives:
        log(f"[train] only {k} negatives per query fit this corpus ({n_passages} passages); "
            f"train.num_negatives={num_negatives} lowered")
    b = per_device
    while True:
        try:
            plan = BatchPlan(examples, n_passages, b * world, k, seed, log=log)
            plan.epoch(0)
        except UserError:
            if b == 1:
                raise
            b = max(1, b // 2)
            continue
        if b < per_device:
            log(f"[train] {len(examples)} queries cannot fill duplicate-free batches of {per_device} per device; "
                f"using {b} (lower train.batch_size to silence this)")
        return plan


class PlannedBatches(torch.utils.data.IterableDataset):
    """Yields this rank's tokenised slice of global micro-batch ``start()``, ``start()+1``, ..."""

    def __init__(self, plan: BatchPlan, texts: list[str], collate: Callable[[list[str], list[str]], dict],
                 rank: int, world: int, total: int, start: Callable[[], int],
                 rank_world: Callable[[], tuple[int, int]] | None = None):
        self.plan, self.texts, self.collate = plan, texts, collate
        self.rank, self.world, self.total, self.start = rank, world, total, start
        self.rank_world = rank_world  # if given, (rank, world) are read from it when iteration starts

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.rank_world is not None:
            self.rank, self.world = self.rank_world()
        per = self.plan.global_batch // self.world
        for b in range(self.start(), self.total):
            items = self.plan.batch(b)[self.rank * per : (self.rank + 1) * per]
            queries = [self.plan.examples[it.example].query for it in items]
            passages, ids = [], []
            for it in items:
                for p in (it.positive, *it.negatives):
                    passages.append(self.texts[p])
                    ids.append(p)
            width = max(len(self.plan.examples[it.example].positives) for it in items)
            pos_sets = torch.full((len(items), width), -1, dtype=torch.long)
            for i, it in enumerate(items):
                ps = self.plan.examples[it.example].positives
                pos_sets[i, : len(ps)] = torch.tensor(ps)
            batch = self.collate(queries, passages)
            batch["passage_ids"] = torch.tensor(ids, dtype=torch.long)
            batch["pos_sets"] = pos_sets
            batch["query_rows"] = torch.tensor([it.example for it in items], dtype=torch.long)  # train.teacher
            yield batch
