"""The gateway alone, for a pod where Triton runs in its own container (nvcr.io/nvidia/tritonserver):

    python -m domain_embed.serve.gateway --encoding /models/encoding.json --triton-url 127.0.0.1:8001

Settings come from configs/serve (if the config tree is present) and the DOMAIN_EMBED_SERVE_*
environment variables; the flags win. ``domain-embed serve RUN_DIR`` is the one-command form that
also starts Triton.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import UserError
from .settings import ServeSettings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-repository", type=Path, help="the Triton model repository (reads its encoding.json)")
    src.add_argument("--encoding", type=Path, help="encoding.json from the model repository")
    ap.add_argument("--triton-url", default=None, help="Triton gRPC host:port (else serve.triton_url)")
    ap.add_argument("--host", default=None)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--served-name", default=None, help="model name clients use (else serve.served_name)")
    args = ap.parse_args(argv)
    try:
        import uvicorn

        from .app import create_app

        try:
            from ..config import load_config

            cfg = load_config(None, [], save=False)
        except UserError:  # a gateway image without the config tree: defaults + env only
            cfg = None
        s = ServeSettings.from_config(cfg)
        for key in ("triton_url", "host", "port", "served_name"):
            if getattr(args, key) is not None:
                setattr(s, key, getattr(args, key))
        if not s.served_name:
            raise UserError("no served model name: pass --served-name or set DOMAIN_EMBED_SERVE_SERVED_NAME")
        if args.encoding is None:
            args.encoding = args.model_repository / "encoding.json"
        if not args.encoding.is_file():
            raise UserError(f"{args.encoding} does not exist; point --encoding at triton/encoding.json of an export")
        spec = json.loads(args.encoding.read_text())
        uvicorn.run(create_app(s, spec, repository=args.encoding.parent), host=s.host, port=s.port, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=int(s.shutdown_grace_s))
        return 0
    except UserError as exc:
        print(f"domain-embed gateway: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
