"""Colour spaces and the two colour-preservation methods of Gatys et al. (2016b).

* luminance-only transfer: stylise the luminance channel (YIQ's Y), keep the
  content's chroma (I, Q);
* colour matching: give the style image the content's colour statistics
  (mean and covariance of RGB, "histogram matching" in the paper) before
  transfer.
"""

from __future__ import annotations

import torch

_RGB_TO_YIQ = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [0.595716, -0.274453, -0.321263],
        [0.211456, -0.522591, 0.311135],
    ]
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _apply(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", matrix.to(image), image)


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    return _apply(_RGB_TO_YIQ, image)


def yiq_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return _apply(_YIQ_TO_RGB, image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """Y channel ``[N, 1, H, W]``."""
    return rgb_to_yiq(image)[:, :1]


def gray3(y: torch.Tensor) -> torch.Tensor:
    """A luminance map as a 3-channel image (what the backbone sees in luminance-only mode)."""
    return y.expand(-1, 3, -1, -1).contiguous()


def match_luminance(style_y: torch.Tensor, content_y: torch.Tensor) -> torch.Tensor:
    """Shift/scale the style's luminance to the content's mean and std (Gatys 2016b, eq. 2)."""
    mu_s, sd_s = style_y.mean(), style_y.std().clamp_min(1e-6)
    mu_c, sd_c = content_y.mean(), content_y.std()
    return (style_y - mu_s) * (sd_c / sd_s) + mu_c


def combine_luminance(stylised: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The stylised image's luminance with the content's chroma (I, Q), back in RGB."""
    y = luminance(stylised)
    iq = rgb_to_yiq(content)[:, 1:]
    if iq.shape[-2:] != y.shape[-2:]:
        iq = torch.nn.functional.interpolate(iq, size=y.shape[-2:], mode="bilinear", align_corners=False)
    return yiq_to_rgb(torch.cat([y, iq], dim=1)).clamp(0, 1)


def _sym_sqrt(cov: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(cov)
    vals = vals.clamp_min(1e-8)
    d = vals.rsqrt() if inverse else vals.sqrt()
    return vecs @ torch.diag(d) @ vecs.T


def match_color(source: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Linearly map `source`'s RGB so its mean and covariance equal `reference`'s.

    x' = C_r^{1/2} C_s^{-1/2} (x - mu_s) + mu_r  (the symmetric "image analogies"
    variant, which changes hue least).  Used to give a style image the
    content's colours.
    """
    src = source.double()[0].reshape(3, -1)
    ref = reference.double()[0].reshape(3, -1)
    mu_s, mu_r = src.mean(1, keepdim=True), ref.mean(1, keepdim=True)
    eye = torch.eye(3, dtype=torch.float64) * eps
    cov_s = torch.cov(src) + eye
    cov_r = torch.cov(ref) + eye
    transform = _sym_sqrt(cov_r) @ _sym_sqrt(cov_s, inverse=True)
    out = transform @ (src - mu_s) + mu_r
    return out.reshape(source.shape).to(source.dtype).clamp(0, 1)


def chroma(image: torch.Tensor) -> torch.Tensor:
    """The I and Q channels ``[N, 2, H, W]``."""
    return rgb_to_yiq(image)[:, 1:]


#: sRGB (D65) linear RGB -> CIE XYZ, and the D65 white point (IEC 61966-2-1).
_RGB_TO_XYZ = torch.tensor(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_D65 = (0.95047, 1.0, 1.08883)


def rgb_to_lab(image: torch.Tensor) -> torch.Tensor:
    """CIELAB (D65) of an sRGB ``[N, 3, H, W]`` image in [0, 1]: L in [0, 100], a and b about [-110, 110].

    A perceptual space (Euclidean distance ~ colour difference, Delta E 1976) for the evaluator's
    colour-distribution distance; RGB distances overweight the greens and the dark tones."""
    x = image.float().clamp(0, 1)
    lin = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    xyz = _apply(_RGB_TO_XYZ, lin) / torch.tensor(_D65, dtype=x.dtype).view(1, 3, 1, 1)
    d = 6 / 29
    f = torch.where(xyz > d**3, xyz.clamp_min(1e-12) ** (1 / 3), xyz / (3 * d * d) + 4 / 29)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    return torch.cat([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)
