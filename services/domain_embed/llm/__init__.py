"""LLM: the OpenAI-compatible client the pipeline talks to, and the bundled local server it can start.

Takes: ``llm.base_url`` (a NIM or any OpenAI-compatible endpoint) or the bundled GGUF model with llama.cpp.
Gives: chat completions with retries, JSON repair and token counts; a managed local server (``Endpoint``).
Guarantees: a wrong key or URL fails at once (preflight) with what to set; a started server is always stopped.
"""
