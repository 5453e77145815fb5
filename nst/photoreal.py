"""Photorealism regulariser of Luan et al. 2017 (Deep Photo Style Transfer).

The output should be a *locally affine colour transform* of the content photo:
in every 3x3 window, ``O_i ≈ A_k I_i + b_k``.  Levin et al. (2008) showed that
the least-squares residual of that fit, summed over all windows and minimised
over the per-window ``A_k, b_k`` (with a ridge ``epsilon |A_k|^2``), is a
quadratic form ``V^T L V`` of the output channel ``V``, where ``L`` is the
*Matting Laplacian* of the content image:

    L_ij = sum_{k: i,j in w_k} [ delta_ij - (1 + (I_i - mu_k)^T (Sigma_k + eps/|w_k| I_3)^-1 (I_j - mu_k)) / |w_k| ]

(``mu_k``, ``Sigma_k``: mean and covariance of the content colours in window
``w_k``, ``|w_k| = 9``; windows lie fully inside the image, as in Levin's code).
Luan et al. add ``lambda * sum_c V_c^T L V_c`` to the style-transfer loss, with
images in [0, 1] and ``epsilon = 1e-7`` (their ``gen_laplacian.m``:
``getLaplacian1(im2double(input), zeros(h, w), 1e-7, 1)``).

Scale used here: the term is **divided by the number of pixels** (``H*W``), so
its value is the mean local-affine residual per pixel, summed over the three
channels, and means the same at every output size.  It is ~0 for any affine
recolouring of the content (``O = A I + b``, same ``A, b`` everywhere), a few
1e-4 for a plain Gatys transfer between two photos, and ~1 for noise.  See the
docs/performance.md ("Photorealism") for the measured weights.

`L` is built once per (content pixels, size, epsilon) with vectorised numpy
(all windows at once, in chunks to bound memory) as a `scipy.sparse` CSR
matrix, and cached; the loss multiplies it with the image as a torch sparse
CSR tensor (one sparse matmul per step; the gradient ``2 L V`` reuses the
forward product).  The term adapts to the size of the image it is called with
(the Laplacian of the content resized to that size), so it works unchanged in
coarse-to-fine optimisation.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import OrderedDict

import numpy as np
import scipy.sparse as sp
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from .errors import ConfigError

#: Luan et al.'s (and Levin et al.'s) epsilon, for images in [0, 1].
DEFAULT_EPSILON = 1e-7
#: Windows processed per chunk while building L (bounds the peak memory: ~80 values each).
_CHUNK = 1 << 15
#: How many Laplacians to keep (one per content image, size and epsilon).
CACHE_ENTRIES = 4


# --------------------------------------------------------------------------- the Laplacian


def _as_hwc(image) -> np.ndarray:
    """A ``[1, 3, H, W]`` / ``[3, H, W]`` tensor or an ``H x W x 3`` array as float64 HxWx3."""
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        t = t[0] if t.dim() == 4 else t
        return t.permute(1, 2, 0).numpy().astype(np.float64)
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {a.shape}")
    return a


def matting_laplacian(image, epsilon: float = DEFAULT_EPSILON, radius: int = 1) -> sp.csr_matrix:
    """Levin et al.'s Matting Laplacian ``[H*W, H*W]`` (float64 CSR) of `image` (values in [0, 1]).

    Pixels are numbered row-major (``y * W + x``), the order of ``image[0, c].reshape(-1)``.
    Windows are ``(2 radius + 1)^2`` squares fully inside the image.
    """
    img = _as_hwc(image)
    h, w, c = img.shape
    win = 2 * radius + 1
    n = win * win
    npx = h * w
    if h < win or w < win:
        raise ConfigError(f"photoreal: image {w}x{h} is smaller than one {win}x{win} window")
    pixels = img.reshape(npx, c)
    # every window's pixel indices at once: [n_windows, n]
    windows = sliding_window_view(np.arange(npx).reshape(h, w), (win, win)).reshape(-1, n)
    reg = (epsilon / n) * np.eye(c)
    lap = sp.csr_matrix((npx, npx))
    for start in range(0, len(windows), _CHUNK):
        idx = windows[start:start + _CHUNK]  # [m, n]
        colours = pixels[idx]  # [m, n, c]
        mu = colours.mean(axis=1, keepdims=True)
        xc = colours - mu
        cov = np.matmul(xc.transpose(0, 2, 1), xc) / n  # [m, c, c]
        inv = np.linalg.inv(cov + reg)
        vals = (1.0 + np.matmul(np.matmul(xc, inv), xc.transpose(0, 2, 1))) / n  # [m, n, n]
        vals = np.eye(n) - vals
        rows = np.broadcast_to(idx[:, :, None], vals.shape)
        cols = np.broadcast_to(idx[:, None, :], vals.shape)
        lap = lap + sp.coo_matrix((vals.ravel(), (rows.ravel(), cols.ravel())), shape=(npx, npx)).tocsr()
    lap.sum_duplicates()
    return lap


def to_torch(lap: sp.csr_matrix, device: str | torch.device = "cpu", dtype=torch.float32) -> torch.Tensor:
    """A scipy CSR matrix as a torch sparse CSR tensor."""
    lap = lap.tocsr()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is 10x faster than COO here
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(lap.indptr.astype(np.int64)),
            torch.from_numpy(lap.indices.astype(np.int64)),
            torch.from_numpy(lap.data).to(dtype),
            size=lap.shape,
            check_invariants=False,
        ).to(device)


class _Entry:
    def __init__(self, lap: sp.csr_matrix, build_s: float) -> None:
        self.lap = lap
        self.build_s = build_s
        self.tensors: dict[str, torch.Tensor] = {}


_CACHE: "OrderedDict[tuple, _Entry]" = OrderedDict()
_LOCK = threading.Lock()
STATS = {"builds": 0, "hits": 0}


def _content_at(content: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    from .images import resize

    t = content.detach().float().cpu()
    t = t if t.dim() == 4 else t.unsqueeze(0)
    return resize(t, tuple(hw))


def laplacian_for(content: torch.Tensor, hw: tuple[int, int] | None = None,
                  epsilon: float = DEFAULT_EPSILON) -> _Entry:
    """The cached Laplacian of `content` resized to `hw` (default: its own size).

    Keyed by the resized content's digest, the size and epsilon; built at most once per key
    (concurrent callers wait for the first).
    """
    from .features import tensor_digest

    hw = tuple(hw or content.shape[-2:])
    img = _content_at(content, hw)
    key = (tensor_digest(img), hw, float(epsilon))
    with _LOCK:  # one build at a time: they are big, and a second caller wants the same one
        entry = _CACHE.get(key)
        if entry is not None:
            _CACHE.move_to_end(key)
            STATS["hits"] += 1
            return entry
        t0 = time.perf_counter()
        entry = _Entry(matting_laplacian(img, epsilon), 0.0)
        entry.build_s = time.perf_counter() - t0
        STATS["builds"] += 1
        _CACHE[key] = entry
        while len(_CACHE) > CACHE_ENTRIES:
            _CACHE.popitem(last=False)
        return entry


def _tensor(entry: _Entry, device: torch.device) -> torch.Tensor:
    with _LOCK:
        t = entry.tensors.get(str(device))
        if t is None:
            t = entry.tensors[str(device)] = to_torch(entry.lap, device)
        return t


# --------------------------------------------------------------------------- the loss


class _QuadraticForm(torch.autograd.Function):
    """``sum_c V_c^T L V_c`` for ``V`` = [N, C] and a symmetric sparse ``L``; gradient ``2 L V``."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, lap: torch.Tensor) -> torch.Tensor:
        lv = torch.sparse.mm(lap, v)
        ctx.save_for_backward(lv)
        return (v * lv).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (lv,) = ctx.saved_tensors
        return 2.0 * grad * lv, None


def quadratic_form(image: torch.Tensor, lap: torch.Tensor) -> torch.Tensor:
    """``sum_c V_c^T L V_c`` of a ``[1, C, H, W]`` image (fp32), differentiable in the image."""
    v = image.float().reshape(image.shape[-3], -1).t().contiguous()  # [H*W, C]
    return _QuadraticForm.apply(v, lap)


class PhotorealLoss(nn.Module):
    """Luan et al.'s photorealism term ``sum_c V_c^T L V_c / (H W)`` for the given content photo.

    Called with the current image; the Laplacian is that of the content resized to the image's
    size, built on first use and cached (by content, size and epsilon), so the same module works at
    every scale of a coarse-to-fine optimisation.
    """

    def __init__(self, content: torch.Tensor, epsilon: float = DEFAULT_EPSILON) -> None:
        super().__init__()
        self.content = content.detach().float().cpu()
        self.epsilon = float(epsilon)
        self._current: tuple[tuple, torch.Tensor] | None = None

    def laplacian(self, hw: tuple[int, int], device: torch.device) -> torch.Tensor:
        key = (tuple(hw), str(device))
        if self._current is None or self._current[0] != key:
            self._current = (key, _tensor(laplacian_for(self.content, hw, self.epsilon), device))
        return self._current[1]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        return quadratic_form(image, self.laplacian((h, w), image.device)) / (h * w)


def photoreal_term(content: torch.Tensor, config) -> PhotorealLoss:
    """The term `stylize` adds for ``config.photoreal_weight``: the Laplacian of the content photo
    (its luminance, as the network sees it, with ``preserve_color='luminance'``)."""
    if config.preserve_color == "luminance":
        from . import color

        content = color.gray3(color.luminance(content))
    return PhotorealLoss(content, config.photoreal_epsilon)


@torch.no_grad()
def photoreal_energy(output: torch.Tensor, content: torch.Tensor, epsilon: float = DEFAULT_EPSILON) -> float:
    """The regulariser's value (the `photoreal` loss term, unweighted) of an `output` for its `content`.

    The content is resized to the output's size; lower is more photorealistic (0: a locally
    affine recolouring of the content).  Works whether or not the output was optimised with it.
    """
    out = output.detach().float().cpu()
    out = out if out.dim() == 4 else out.unsqueeze(0)
    return float(PhotorealLoss(content, epsilon)(out))
