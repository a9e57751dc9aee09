"""Test-only start-up hook (this folder goes first on PYTHONPATH): each training process writes the
sha256 of its rank's final weights to $DOMAIN_EMBED_TEST_WEIGHT_HASH_DIR/rank<N>.json.

Python imports ``sitecustomize`` in every process it starts, so this reaches the CLI, the worker and
every DDP rank Lightning launches, without a hook in the product code.
"""

import os

_out = os.environ.get("DOMAIN_EMBED_TEST_WEIGHT_HASH_DIR")
if _out:
    import hashlib
    import json
    from pathlib import Path

    import lightning.pytorch as _pl

    _fit = _pl.Trainer.fit

    def _fit_and_hash(self, model, *args, **kwargs):
        result = _fit(self, model, *args, **kwargs)
        h = hashlib.sha256()
        for k, v in sorted(model.model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        Path(_out).mkdir(parents=True, exist_ok=True)
        Path(_out, f"rank{self.global_rank}.json").write_text(json.dumps({"sha256": h.hexdigest()}))
        return result

    _pl.Trainer.fit = _fit_and_hash
