"""Split: train, validation and test by document, so no test passage was seen in training.

Takes: ``curate/chunks.jsonl`` and ``synth/qa.jsonl``.
Gives: ``split/train_qa.jsonl``, ``train_corpus.jsonl``, and BEIR folders ``val_beir`` and ``eval_beir``.
Guarantees: disjoint documents between parts; the test corpus is the whole corpus (the others as distractors).
"""
