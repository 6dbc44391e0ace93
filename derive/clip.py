"""Gradient-norm clipping, the two-line rule of the seed article (Pascanu et al. 2013):

    if ‖g‖ > threshold:   g ← (threshold / ‖g‖) · g

where ‖g‖ is the Euclidean norm of *all* gradients together (every array flattened into
one vector), so the direction of the step is kept and only its length is capped.
"""

from __future__ import annotations

import math

import numpy as np


def clip_grad_norm(grads, max_norm: float):
    """(clipped gradients, the global norm before clipping).

    `grads` is a dict name -> array (what `Kernel.backward` returns) or a list/tuple of
    arrays; the result has the same form, with new arrays (the inputs are not changed).
    When the norm exceeds `max_norm` every array is scaled by max_norm / norm; otherwise
    the arrays are returned as copies, unscaled. A non-finite norm is returned as it is
    and the gradients are scaled by max_norm / norm like any other (giving NaN), so a
    caller can detect it. `max_norm` must be a positive number.
    """
    try:
        limit = float(max_norm)
    except (TypeError, ValueError):
        raise ValueError(f"max_norm must be a positive number, not {max_norm!r}") from None
    if not limit > 0 or math.isinf(limit):
        raise ValueError(f"max_norm must be a positive finite number, not {max_norm!r}")
    if isinstance(grads, dict):
        names, arrays = list(grads), [np.asarray(g) for g in grads.values()]
    elif isinstance(grads, (list, tuple)):
        names, arrays = None, [np.asarray(g) for g in grads]
    else:
        raise ValueError(f"grads must be a dict of arrays or a list of arrays, not "
                         f"{type(grads).__name__}")
    total = math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))
    scale = limit / total if (total > limit or not math.isfinite(total)) else 1.0
    with np.errstate(invalid="ignore"):   # an infinite norm: inf · 0 is NaN, on purpose
        clipped = [(a * scale).astype(a.dtype, copy=False) if scale != 1.0 else a.copy()
                   for a in arrays]
    if names is not None:
        return dict(zip(names, clipped)), total
    return type(grads)(clipped), total
