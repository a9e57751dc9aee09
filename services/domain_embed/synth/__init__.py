"""Synthesize: query-passage pairs for the chunks, written by an LLM and taken from the documents' structure.

Takes: ``curate/chunks.jsonl`` and an OpenAI-compatible endpoint (the bundled llama.cpp model or a NIM).
Gives: ``synth/qa.jsonl`` (typed queries with their supporting chunk ids), ``dropped.jsonl`` with each drop's reason.
Guarantees: every pair passed format, copy, dedup, round-trip (and judge) filters; generations resume by key.
"""
