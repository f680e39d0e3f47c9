"""Checks that commands run before any expensive work, so that a missing download or
package fails in the first second with one line instead of after generating objects."""

from __future__ import annotations

import warnings
from pathlib import Path

from .errors import UserError

#: torchvision weights the LPIPS backbones load (``lpips.LPIPS(net=...)``, pretrained trunk)
LPIPS_BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


def check_lpips(net: str, random_trunk: bool = False) -> None:
    """Make sure LPIPS with backbone ``net`` can be built: the ``lpips`` package imports and
    the backbone's ImageNet weights are in the torch hub cache or can be downloaded now (they
    are downloaded here, at most once). Builds the shared model of ``metrics.lpips_model``.

    Raises:
        UserError: naming the missing package or file, where it belongs, and ``--lpips none``.
    """
    try:
        import lpips  # noqa: F401
    except ImportError:
        raise UserError("LPIPS needs the 'lpips' package", hint="pip install 'ouroboros3d[lpips]', or pass --lpips none") from None
    if random_trunk:
        return
    import torch
    import torchvision.models

    from .metrics import lpips_model

    url = getattr(torchvision.models, LPIPS_BACKBONES[net]).IMAGENET1K_V1.url
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        with warnings.catch_warnings():  # torchvision's deprecation notes about lpips' own call
            warnings.simplefilter("ignore", UserWarning)
            lpips_model(net, False, "cpu")
    except OSError as err:  # urllib's URLError included: offline, proxy, DNS
        reason = str(getattr(err, "reason", err)).strip()
        reason = reason.splitlines()[0] if reason else type(err).__name__
        raise UserError(
            f"LPIPS backbone '{net}' needs torchvision's ImageNet weights {Path(url).name}, which are not in "
            f"{folder} and could not be downloaded ({reason})",
            hint=f"pass --lpips none to skip LPIPS, or download {url} into {folder}/ (set TORCH_HOME to move that cache)",
        ) from err
