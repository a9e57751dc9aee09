"""Interpolating the tuned weights with the base model's (WiSE-FT, Wortsman et al. 2022).

A model fine-tuned on a few hundred synthetic queries drifts from what its base learned from a
billion real pairs. ``alpha * tuned + (1 - alpha) * base``, parameter by parameter, keeps most of
the domain gain and gives back much of what was forgotten, at no cost at serving time: the result
is an ordinary model of the same architecture.
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError


def check_alpha(value: Any, key: str = "train.base_mix") -> float:
    """``value`` as a mixing weight in (0, 1]; 1 keeps the tuned weights unchanged."""
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{key}={value!r} is not a number; give the tuned weights' share, in (0, 1] "
                        f"(1 = the tuned model as trained)") from None
    if not 0.0 < alpha <= 1.0:
        raise UserError(f"{key}={alpha:g} is outside (0, 1]; 1 keeps the tuned model as trained, 0.5 averages it "
                        f"with the base")
    return alpha


def mix_with_base(model, base_path: str, alpha: float) -> dict[str, Any]:
    """Set ``model``'s parameters and buffers to ``alpha * model + (1 - alpha) * base``, in place.

    ``base_path`` is the base model's directory, loaded with the same class as ``model``. Tensors
    the base lacks, or of another shape (a resized vocabulary), keep the tuned values; integer
    buffers (position ids) are left as they are. Returns counts for the model card."""
    import torch

    if alpha >= 1.0:
        return {"alpha": 1.0, "mixed": 0, "kept": 0}
    base = type(model).from_pretrained(base_path)
    base_state = base.state_dict()
    mixed = kept = 0
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            other = base_state.get(name)
            if other is None or other.shape != tensor.shape or not tensor.is_floating_point():
                kept += 1
                continue
            tensor.mul_(alpha).add_(other.to(tensor.dtype), alpha=1.0 - alpha)
            mixed += 1
    if mixed == 0:
        raise UserError(f"train.base_mix: none of the tuned model's tensors matches the base at {base_path}; "
                        f"is model.path the model that was trained? Set train.base_mix=1 to skip mixing")
    return {"alpha": alpha, "mixed": mixed, "kept": kept}
