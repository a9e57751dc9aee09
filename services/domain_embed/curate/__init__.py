"""Curate: the user's documents become clean, deduplicated, token-bounded chunks.

Takes: the files under ``corpus.path`` (HTML, Markdown, text, PDF), after ``corpus.include``/``exclude``.
Gives: ``curate/chunks.jsonl``, one chunk a line (id, doc_id, title, heading path, text, token count).
Guarantees: no exact or near duplicate document, no chunk over ``model.max_passage_length`` tokens, stable ids.
"""
