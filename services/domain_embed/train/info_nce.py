"""InfoNCE over a positive, mined hard negatives and (optionally) in-batch negatives.

Inputs (one rank's view):

=================  ===============================  =============================================
name               shape                            meaning
=================  ===============================  =============================================
``q``              [B, D]                           this rank's query embeddings (normalised)
``p``              [N, D]                           passages of ALL ranks, ``1 + K`` per query,
                                                    grouped by query, this rank's block at
                                                    ``offset`` (gathered with gradients)
``passage_ids``    [N]                              corpus row of each passage
``pos_sets``       [B, P]                           every positive row of each query (-1 = pad)
=================  ===============================  =============================================

Query ``i``'s target is column ``(offset + i) * (1 + K)``. Another column holding one of the
query's positives is masked (it is not a negative). Without in-batch negatives only the query's
own ``1 + K`` columns are scored.

Temperature 0.02 (the recipe's) is the default; MultipleNegativesRankingLoss's scale 20 is 0.05.

:func:`passage_to_query` is the reverse direction (``train.symmetric``): each query's target passage must
pick its own query out of the micro-batch's queries. InfoNCE alone moves a positive toward its query and
never away from the others, so a passage trained as the answer to a generic query ("Debian", "what is
debian") drifts toward what every query of the domain shares and turns up in their top 10 (a hub: after a
Debian run, one preface chunk sat in the top 10 of 22 of the 85 test questions, against 4 for the base).

:func:`base_kl` is the regulariser toward the base model (``train.distill_base``, learning without
forgetting, Li & Hoiem 2016): the KL divergence from the frozen base's distribution over each
query's candidates (the same columns InfoNCE scores) to the tuned model's. InfoNCE moves the
target up; this term keeps the order the base gave the rest, where the synthetic label says nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(q: torch.Tensor, p: torch.Tensor, passage_ids: torch.Tensor, pos_sets: torch.Tensor, group: int,
             offset: int = 0, temperature: float = 0.02, in_batch: bool = True) -> torch.Tensor:
    B = q.shape[0]
    logits = (q @ p.T).float() / temperature                       # [B, N]
    rows = torch.arange(B, device=q.device)
    target = (offset + rows) * group
    # columns that are one of the query's positives but not its target
    is_pos = (passage_ids[None, :, None] == pos_sets[:, None, :]).any(-1)  # [B, N]
    mask = is_pos.clone()
    mask[rows, target] = False
    if not in_batch:
        cols = torch.arange(p.shape[0], device=q.device)
        own = (cols[None, :] >= target[:, None]) & (cols[None, :] < target[:, None] + group)
        mask |= ~own
    logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, target)


def passage_to_query(q: torch.Tensor, p: torch.Tensor, passage_ids: torch.Tensor, pos_sets: torch.Tensor,
                     group: int, offset: int = 0, temperature: float = 0.02) -> torch.Tensor:
    """Cross-entropy of each local query's target passage over this rank's queries (the target is its own
    query); a query that also holds that passage among its positives is not a negative."""
    B = q.shape[0]
    rows = torch.arange(B, device=q.device)
    targets = (offset + rows) * group
    logits = (p[targets] @ q.T).float() / temperature                       # [B passages, B queries]
    shared = (passage_ids[targets][:, None, None] == pos_sets[None, :, :]).any(-1)  # [B, B]
    shared[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(shared, float("-inf")), rows)


def candidate_logits(q: torch.Tensor, p: torch.Tensor, group: int, offset: int, temperature: float,
                     in_batch: bool) -> torch.Tensor:
    """[B, N] scores over every passage, or [B, 1 + K] over the query's own group without in-batch negatives."""
    logits = (q @ p.T).float() / temperature
    if in_batch:
        return logits
    B = q.shape[0]
    cols = ((offset + torch.arange(B, device=q.device)) * group)[:, None] + torch.arange(group, device=q.device)
    return logits.gather(1, cols)


def base_kl(q: torch.Tensor, p: torch.Tensor, q_base: torch.Tensor, p_base: torch.Tensor, group: int,
            offset: int = 0, temperature: float = 0.02, in_batch: bool = True) -> torch.Tensor:
    """KL(base || tuned) over each query's candidates, averaged over queries; ``*_base`` carry no gradient."""
    student = F.log_softmax(candidate_logits(q, p, group, offset, temperature, in_batch), dim=-1)
    teacher = F.log_softmax(candidate_logits(q_base, p_base, group, offset, temperature, in_batch), dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True)
