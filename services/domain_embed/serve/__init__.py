"""Serve: the NIM-compatible ``/v1/embeddings`` gateway in front of Triton Inference Server.

Takes: a Triton model repository (``triton/`` of a run, or a mounted one) and the gateway's settings.
Gives: ``/v1/embeddings``, ``/v1/models``, health and metrics endpoints, speaking the NeMo Retriever API.
Guarantees: every bad request gets a 4xx with a JSON ``message``; the encoding spec is the trained model's.
"""
