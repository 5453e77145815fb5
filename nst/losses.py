"""Losses shared by every method: content, Gram style (plain or masked), total variation.

Distances are *relative*: a layer's error divided by the energy of its target.
That makes them independent of image size, of the backbone's activation scale
(Caffe VGG works on 0..255 inputs, torchvision nets on standardised ones) and
of the layer, so one set of weights transfers across sizes and backbones, and
the evaluator can use the very same functions.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

EPS = 1e-8


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp32 for half-precision tensors; fp64 stays fp64 (gradient checks)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class _ScaledGram(torch.autograd.Function):
    """``scale * f @ f^T`` for ``f: [N, C, P]``: the product in fp32, the gradient in f's own dtype.

    Autograd's generic ``bmm(f, f^T)`` differentiates both operands (two matmuls, a transpose and
    an add of two full-size feature gradients); the Gram matrix's gradient is one matmul,
    ``scale * (dG + dG^T) @ f``.  Under bf16/fp16 autocast the features are half precision:
    the Gram matrix is still computed from their exact fp32 values, while its gradient, which
    goes straight back into the half-precision network, is computed (fp32 accumulation) in
    half precision, about 4x cheaper on a CPU with native bf16.
    """

    @staticmethod
    def forward(ctx, f: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(f)
        ctx.scale = scale
        f32 = _at_least_fp32(f)
        return torch.bmm(f32, f32.transpose(1, 2)).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (f,) = ctx.saved_tensors
        sym = (grad + grad.transpose(1, 2)).mul_(ctx.scale).to(f.dtype)
        # f^T @ sym, transposed back: the gradient keeps f's memory layout (channels_last features).
        return torch.bmm(f.transpose(1, 2), sym).transpose(1, 2), None


def gram_matrix(features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrix ``[N, C, C]`` of ``[N, C, H, W]`` features, in fp32, averaged over positions.

    With a `mask` (``[1 or N, 1, H, W]``, values in [0, 1]) the features are
    weighted by it and the average is over the mask's area (Gatys et al. 2017's
    guided Gram matrix).
    """
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w)
    if mask is None:
        return _ScaledGram.apply(f, 1.0 / (h * w))
    m = _at_least_fp32(mask).reshape(mask.shape[0], 1, h * w)
    fm = _at_least_fp32(f) * m
    g = _ScaledGram.apply(fm, 1.0)
    return g / m.sum(dim=2, keepdim=True).clamp_min(1.0)


def relative_error(x: torch.Tensor, target: torch.Tensor, norm: torch.Tensor | float | None = None) -> torch.Tensor:
    """``mean((x - target)^2) / mean(target^2)``, computed in fp32."""
    t = target.float()
    if norm is None:
        norm = t.pow(2).mean().clamp_min(EPS)
    return (x.float() - t).pow(2).mean() / norm


class ContentLoss(nn.Module):
    """Relative feature MSE to a fixed content target (Gatys' content loss, normalised)."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", None)
        self.register_buffer("norm", None)
        self.retarget(target)

    def retarget(self, target: torch.Tensor) -> None:
        """A new target of the same layer (feed-forward training: each batch has its own content)."""
        t = target.detach().float()
        self.target = t
        self.norm = t.pow(2).mean().clamp_min(EPS)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return relative_error(features, self.target, self.norm)


class StyleLoss(nn.Module):
    """Relative Gram-matrix MSE to a target Gram (optionally a guided/masked one)."""

    def __init__(self, target_gram: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        super().__init__()
        g = target_gram.detach().float()
        self.register_buffer("target", g)
        self.register_buffer("norm", g.pow(2).mean().clamp_min(EPS))
        self.register_buffer("mask", None if mask is None else mask.detach().float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return relative_error(gram_matrix(features, self.mask), self.target, self.norm)


def mean_cov(features: torch.Tensor) -> torch.Tensor:
    """Feature mean and covariance of ``[N, C, H, W]`` features as one ``[N, C, C + 1]`` fp32 tensor
    (covariance in the first C columns, the mean in the last): the target of `MeanCovLoss`."""
    n, c, h, w = features.shape
    f = _at_least_fp32(features).reshape(n, c, h * w)
    mu = f.mean(dim=2, keepdim=True)
    return torch.cat([_ScaledGram.apply(f - mu, 1.0 / (h * w)), mu], dim=2)


class MeanCovLoss(nn.Module):
    """Relative error of the feature mean plus that of the covariance (a mean-covariance style loss:
    the two moments a Wasserstein-2 distance between Gaussians compares, without its matrix root)."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        t = target.detach().float()
        c = t.shape[1]
        self.register_buffer("cov", t[..., :c].contiguous())
        self.register_buffer("mean", t[..., c:].contiguous())
        self.register_buffer("cov_norm", self.cov.pow(2).mean().clamp_min(EPS))
        self.register_buffer("mean_norm", self.mean.pow(2).mean().clamp_min(EPS))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mc = mean_cov(features)
        c = mc.shape[1]
        return (relative_error(mc[..., :c], self.cov, self.cov_norm)
                + relative_error(mc[..., c:], self.mean, self.mean_norm))


STYLE_STATISTICS = {"gram": gram_matrix, "meancov": mean_cov}


class TVLoss(nn.Module):
    """Total variation: mean squared difference of neighbouring pixels (smoothness prior)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dx = image[..., :, 1:] - image[..., :, :-1]
        dy = image[..., 1:, :] - image[..., :-1, :]
        return dx.float().pow(2).mean() + dy.float().pow(2).mean()


def normalised_layer_weights(layers: Sequence[str], weights: Sequence[float] | None) -> dict[str, float]:
    """Per-layer weights summing to 1 (equal by default), so a term's weight means the same
    whatever the number of layers."""
    if weights is None:
        weights = [1.0] * len(layers)
    if len(weights) != len(layers):
        raise ValueError(f"{len(weights)} layer weights for {len(layers)} layers")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("layer weights must sum to a positive number")
    return {layer: float(w) / total for layer, w in zip(layers, weights)}


class PerceptualLoss(nn.Module):
    """Weighted sum of content, style and TV terms over one feature pass.

    `style_targets` is a list of ``(weight, {layer: gram})`` — several entries
    make a weighted multi-style blend.  `extra` terms (e.g. a temporal or
    photorealism loss) are callables ``image -> scalar`` with a weight.
    """

    def __init__(
        self,
        content_targets: Mapping[str, torch.Tensor] | None,
        content_layer_weights: Mapping[str, float],
        style_targets: Sequence[tuple[float, Mapping[str, torch.Tensor]]],
        style_layer_weights: Mapping[str, float],
        content_weight: float = 1.0,
        style_weight: float = 1.0,
        tv_weight: float = 0.0,
        style_masks: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
        style_loss: str = "gram",
    ) -> None:
        super().__init__()
        if style_loss not in STYLE_STATISTICS:
            raise ValueError(f"unknown style loss '{style_loss}' (use {', '.join(STYLE_STATISTICS)})")
        if style_loss != "gram" and style_masks is not None and any(m is not None for m in style_masks):
            raise ValueError("style masks (guided Gram matrices) need style_loss='gram'")
        self.content_weight = content_weight
        self.style_weight = style_weight
        self.tv_weight = tv_weight
        self.content_layer_weights = dict(content_layer_weights)
        self.style_layer_weights = dict(style_layer_weights)
        self.content = nn.ModuleDict(
            {k: ContentLoss(v) for k, v in (content_targets or {}).items()}
        )
        total_w = sum(w for w, _ in style_targets) or 1.0
        self.style_blend = [w / total_w for w, _ in style_targets]
        masks = list(style_masks) if style_masks is not None else [None] * len(style_targets)
        self.style = nn.ModuleList(
            nn.ModuleDict(
                {
                    layer: StyleLoss(gram, None if masks[i] is None else masks[i][layer])
                    if style_loss == "gram" else MeanCovLoss(gram)
                    for layer, gram in grams.items()
                }
            )
            for i, (_, grams) in enumerate(style_targets)
        )
        self.tv = TVLoss()
        self.extra: list[tuple[str, float, nn.Module]] = []

    @property
    def layers(self) -> list[str]:
        names = list(self.content.keys())
        for s in self.style:
            names += list(s.keys())
        return list(dict.fromkeys(names))

    def add_term(self, name: str, weight: float, term: nn.Module) -> None:
        self.extra.append((name, weight, term))

    def set_content_targets(self, targets: Mapping[str, torch.Tensor]) -> None:
        """Swap the content targets (same layers), keeping the style targets: one loss object serves
        every batch of a feed-forward training, so a compiled version of it is compiled once."""
        if set(targets) != set(self.content.keys()):
            raise ValueError(f"content targets for {sorted(targets)}, the loss has {sorted(self.content.keys())}")
        for layer, loss in self.content.items():
            loss.retarget(targets[layer])

    def forward(
        self, image: torch.Tensor, features: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms: dict[str, torch.Tensor] = {}
        zero = image.new_zeros(())
        content = zero
        for layer, loss in self.content.items():
            content = content + self.content_layer_weights[layer] * loss(features[layer])
        style = zero
        for blend, losses in zip(self.style_blend, self.style):
            for layer, loss in losses.items():
                style = style + blend * self.style_layer_weights[layer] * loss(features[layer])
        tv = self.tv(image) if self.tv_weight else zero
        total = self.content_weight * content + self.style_weight * style + self.tv_weight * tv
        terms.update(content=content, style=style, tv=tv)
        for name, weight, term in self.extra:
            value = term(image)
            terms[name] = value
            total = total + weight * value
        terms["total"] = total
        return total, terms


class TemporalLoss(nn.Module):
    """Ruder et al. (2016) short-term temporal loss: masked MSE to the previous stylised frame
    warped into this one.  The mask (``[1, 1, H, W]`` in [0, 1]) is 0 where the flow is
    unreliable (occlusions, motion boundaries), so disoccluded regions are free to change."""

    def __init__(self, warped: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("warped", warped.detach().float())
        self.register_buffer("mask", mask.detach().float())
        self.register_buffer("area", (self.mask.sum() * warped.shape[1]).clamp_min(1.0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (self.mask * (image.float() - self.warped).pow(2)).sum() / self.area
