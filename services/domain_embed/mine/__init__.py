"""Mine: positive-aware hard negatives for every training query, with the base model and FAISS.

Takes: ``split/train_qa.jsonl``, ``split/train_corpus.jsonl`` and the base model (vectors from the run's store).
Gives: ``mine/train.jsonl``: each query with its positives and ``mine.num_negatives`` negatives and their scores.
Guarantees: no negative is a positive, a near duplicate of one, or scored above the margin below the positive.
"""
