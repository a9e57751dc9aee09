"""domain-embed: tune a general text-embedding model to a domain and serve it as a NIM-compatible service."""

__version__ = "0.1.0"
