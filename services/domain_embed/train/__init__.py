"""Train: contrastive fine-tuning of the bi-encoder with Lightning, on CPU, one GPU or many nodes.

Takes: ``mine/train.jsonl``, ``split/train_corpus.jsonl``, ``split/val_beir`` and the base model.
Gives: ``train/model`` (a sentence-transformers directory with its encoding spec and model card), metrics.jsonl.
Guarantees: the best validated weights; a killed run resumes to the same weights; ``train.budget_minutes`` holds.
"""
