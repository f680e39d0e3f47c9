"""Full precision inside a caller's ``torch.autocast``.

Under ``autocast: true`` (see the recipe) the models of the sampling loop run under
``torch.autocast``; geometry (camera rays) and the encoders the official script runs in fp32
(SVD's CLIP and VAE encoder) opt out with :func:`no_autocast`.
"""

from __future__ import annotations

import contextlib

import torch


def no_autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device``'s type, so the block computes in its tensors' own
    dtypes; a no-op where the type has no autocast (``meta``, on which torch refuses one)."""
    device_type = torch.device(device).type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
