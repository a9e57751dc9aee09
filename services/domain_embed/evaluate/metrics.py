"""BEIR metrics: they live on the lower floor (:mod:`domain_embed.beir`); re-exported for this stage."""

from ..beir import Qrels, Run, _ranked, evaluate, per_query  # noqa: F401
