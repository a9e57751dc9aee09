"""Which tritonserver this machine would run, and which backends it can load (lower floor).

``serve`` starts that server; ``export``'s ``auto`` layout asks what it can load, so the layout
follows the target Triton, not whether torch sees a GPU.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def pytriton_dist() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    d = Path(pytriton.__file__).resolve().parent / "tritonserver"
    return d if (d / "bin" / "tritonserver").is_file() else None


def backend_directory() -> Path | None:
    """The backends folder of the tritonserver that ``serve`` would start (None when there is none)."""
    custom = os.environ.get("DOMAIN_EMBED_TRITONSERVER")
    dist = pytriton_dist()
    if not custom and dist is not None:
        return dist / "backends"
    binary = custom or shutil.which("tritonserver")
    if not binary:
        return None
    # the stock layout: /opt/tritonserver/bin/tritonserver next to /opt/tritonserver/backends
    d = Path(binary).resolve().parent.parent / "backends"
    return d if d.is_dir() else None


def available_backends(directory: Path | None = None) -> set[str]:
    """Names of the backends a tritonserver install can load: its backends/<name>/ folders that
    hold a backend library (libtriton_<name>.so) or, for python, triton_python_backend_utils.py
    (nvidia-pytriton ships the python backend that way)."""
    d = Path(directory) if directory else backend_directory()
    if d is None or not d.is_dir():
        return set()
    found = set()
    for sub in d.iterdir():
        if sub.is_dir() and (any(sub.glob("libtriton_*.so")) or (sub / "triton_python_backend_utils.py").is_file()):
            found.add(sub.name)
    return found
