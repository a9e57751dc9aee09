"""Test-only start-up hooks (this folder goes first on PYTHONPATH). Python imports ``sitecustomize`` in
every process it starts, so they reach the CLI, the worker and every DDP rank Lightning launches,
without a hook in the product code. Each is off unless its variable is set:

- ``DOMAIN_EMBED_TEST_WEIGHT_HASH_DIR``: each training process writes the sha256 of its rank's final
  weights to ``<dir>/rank<N>.json``;
- ``DOMAIN_EMBED_TEST_SLOW_STEP_S``: a fault, a machine that got busier after the budget's timed probe:
  every training micro-batch inside ``Trainer.fit`` (the probe runs before it) sleeps that long first,
  and ``$DOMAIN_EMBED_TEST_TIMES`` gets the time fit started and the time the process ended.
"""

import os

_out = os.environ.get("DOMAIN_EMBED_TEST_WEIGHT_HASH_DIR")
_slow = float(os.environ.get("DOMAIN_EMBED_TEST_SLOW_STEP_S") or 0)

if _out or _slow:
    import lightning.pytorch as _pl

    _fit = _pl.Trainer.fit

if _out:
    import hashlib
    import json
    from pathlib import Path

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

elif _slow:
    import atexit
    import json
    import time
    from pathlib import Path

    _times = Path(os.environ["DOMAIN_EMBED_TEST_TIMES"])

    class _Slow(_pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            time.sleep(_slow)

    def _slow_fit(self, model, *args, **kwargs):
        start = time.monotonic()
        atexit.register(lambda: _times.write_text(json.dumps({"fit_start": start, "end": time.monotonic()})))
        self.callbacks.append(_Slow())
        return _fit(self, model, *args, **kwargs)

    _pl.Trainer.fit = _slow_fit
