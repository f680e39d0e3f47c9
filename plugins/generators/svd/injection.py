"""Adding per-call tensors inside diffusers' UNetSpatioTemporalConditionModel, without a fork.

Every site is a forward (pre-)hook registered once on a UNet sub-module. The hooks do
nothing unless a call runs inside :meth:`UNetInjector.inject`, which hands them the tensors
of that call (already shaped ``(B·V, C, h, w)`` like the UNet's hidden states).

Sites (n = number of down blocks):

- ``camera.down{i}`` / ``camera.mid`` / ``camera.up{i}``: added to the input of down block i,
  the mid block and up block i (pre-hooks seeing ``hidden_states``). With ``inplace=True``
  (official mode) the add is ``hidden_states += x``: the input of a down block / the mid
  block is the very tensor the UNet stored as the last skip of the previous stage (conv_in
  output and downsampler outputs), so those skips carry the camera term too, exactly as in
  the official code.
- ``feedback{k}``, placement ``"official"``: for k < n-1 added (out of place) to the input of
  ``down_blocks[k].downsamplers[0]`` — after the block's last attention, so the block's own
  skips do not see it but the downsampled skip and the next block do; the last scale is
  added to the mid-block output.
- ``feedback{k}``, placement ``"paper"``: added to the output of the last layer of down block
  k (its last attention, or last resnet in a block without attention) before the UNet
  stores it as a skip, so the feature reaches that skip, the downsampler and the next block
  at each of the 4 encoder scales (as diffusers' T2I-Adapter path for 2D UNets does).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Literal

import torch
from torch import nn

Placement = Literal["official", "paper", "none"]


class UNetInjector:
    """Owns the hooks on one UNet and the tensors of the call in progress."""

    def __init__(self, unet: nn.Module, placement: Placement, camera_inplace: bool):
        self._pending: dict[str, torch.Tensor] = {}
        self._active = False
        self.camera_inplace = camera_inplace
        self.handles: list[Any] = []
        n = len(unet.down_blocks)
        for i, block in enumerate(unet.down_blocks):
            self._pre(block, f"camera.down{i}", inplace=camera_inplace)
        self._pre(unet.mid_block, "camera.mid", inplace=camera_inplace)
        for i, block in enumerate(unet.up_blocks):
            self._pre(block, f"camera.up{i}", inplace=camera_inplace)
        if placement == "official":
            for k, block in enumerate(unet.down_blocks[:-1]):
                if not block.downsamplers:
                    raise ValueError(f"official feedback placement needs a downsampler in down block {k}")
                self._pre(block.downsamplers[0], f"feedback{k}", inplace=False)
            self._post(unet.mid_block, f"feedback{n - 1}")
        elif placement == "paper":
            for k, block in enumerate(unet.down_blocks):
                attentions = getattr(block, "attentions", None)
                last = attentions[-1] if attentions else block.resnets[-1]
                self._post(last, f"feedback{k}")

    # ---------------------------------------------------------------- per call
    @contextmanager
    def inject(self, tensors: dict[str, torch.Tensor]) -> Iterator[None]:
        """Make the hooks add ``tensors`` (site name → tensor) during the block of code."""
        if self._active:
            raise RuntimeError("UNetInjector.inject is not re-entrant")
        self._pending, self._active = dict(tensors), True
        try:
            yield
        finally:
            self._pending, self._active = {}, False

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    # ---------------------------------------------------------------- hooks
    def _pre(self, module: nn.Module, site: str, inplace: bool) -> None:
        self.handles.append(module.register_forward_pre_hook(_AddToInput(self, site, inplace), with_kwargs=True))

    def _post(self, module: nn.Module, site: str) -> None:
        self.handles.append(module.register_forward_hook(_AddToOutput(self, site)))


# The hooks are small objects rather than closures: ``copy.deepcopy`` of the generator (an
# EMA copy, for instance) then copies the injector they point to together with the
# generator's own reference to it, so the copy's hooks read the copy's tensors.
class _AddToInput:
    """Forward pre-hook adding the site's tensor to the module's ``hidden_states`` input."""

    def __init__(self, injector: UNetInjector, site: str, inplace: bool):
        self.injector, self.site, self.inplace = injector, site, inplace

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        extra = self.injector._pending.get(self.site)
        if extra is None:
            return None
        by_name = "hidden_states" in kwargs
        hidden = kwargs["hidden_states"] if by_name else args[0]
        if self.inplace:
            hidden.add_(extra.to(hidden.dtype))
            return None
        hidden = hidden + extra.to(hidden.dtype)
        if by_name:
            return args, {**kwargs, "hidden_states": hidden}
        return (hidden, *args[1:]), kwargs


class _AddToOutput:
    """Forward hook adding the site's tensor to the module's output (first element of a tuple)."""

    def __init__(self, injector: UNetInjector, site: str):
        self.injector, self.site = injector, site

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        extra = self.injector._pending.get(self.site)
        if extra is None:
            return None
        if isinstance(output, tuple):  # transformer blocks called with return_dict=False
            return (output[0] + extra.to(output[0].dtype), *output[1:])
        return output + extra.to(output.dtype)


# ---------------------------------------------------------------------- diffusers 0.25.0 context order
class OfficialTimeContext:
    """Forward pre-hook on a ``TemporalBasicTransformerBlock`` that gives its cross-attention
    the context ordering of diffusers 0.25.0, the version the official code pins.

    ``TransformerSpatioTemporalModel.forward`` hands its temporal blocks one context row per
    (batch element, spatial position). The blocks order their hidden rows batch-major
    (``b·hw + s``). diffusers 0.25.0 built the context position-major instead
    (``broadcast_to(hw, batch, 1, C).reshape(hw·batch, 1, C)``), so row ``k`` read the first
    frame's embedding of element ``k mod batch``; with the official CFG pair
    [unconditional, conditional] both halves see the zero embedding at even rows and the image
    embedding at odd ones. diffusers >= 0.30 builds it batch-major. This hook receives the
    batch-major context and re-indexes it into the 0.25.0 order; with batch 1 it leaves the
    call untouched (both orders coincide).
    """

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        context = kwargs.get("encoder_hidden_states")
        if context is None:
            return None
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        num_frames = kwargs["num_frames"] if "num_frames" in kwargs else args[1]
        batch = hidden.shape[0] // num_frames
        if batch == 1:
            return None
        rows = context.shape[0]  # batch · hw
        first = context.reshape(batch, rows // batch, *context.shape[1:])[:, 0]  # (batch, n, C)
        order = torch.arange(rows, device=context.device) % batch
        return args, {**kwargs, "encoder_hidden_states": first[order]}


def install_official_time_context(unet: nn.Module) -> list[Any]:
    """Register :class:`OfficialTimeContext` on every temporal transformer block of ``unet``
    (those of ``TransformerSpatioTemporalModel``); returns the hook handles."""
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    handles = []
    for module in unet.modules():
        if isinstance(module, TransformerSpatioTemporalModel):
            for block in module.temporal_transformer_blocks:
                handles.append(block.register_forward_pre_hook(OfficialTimeContext(), with_kwargs=True))
    return handles
