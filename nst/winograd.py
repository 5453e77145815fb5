"""Winograd convolution for the 3x3 / stride-1 / pad-1 convs of VGG, CPU fp32.

Why: each L-BFGS step runs VGG19 forward to relu5_1 and back to the input
image.  oneDNN's direct convolution already runs close to matmul peak on an
AVX2 CPU, so the only way to go faster is fewer FLOPs.  Winograd F(4x4, 3x3)
computes a 4x4 output tile from a 6x6 input tile with 36 multiplies instead of
144 (4x fewer), at the price of cheap linear transforms before and after the
one big GEMM per layer:

    V = B^T d B  (input tiles)   M[p] = V[p] @ U[p]  (36 GEMMs)   Y = A^T M A

with U = G g G^T precomputed from the frozen weights.  F(2x2, 3x3) (16
multiplies per 4 outputs, 2.25x fewer) is available too; on the reference CPU
it is slower than F(4x4, 3x3) (see benchmarks/bench_winograd.py).

Implementation notes (each choice was measured, see the benchmark):

* Data stays NHWC (channels_last) so channels are the contiguous GEMM axis:
  V is ``[36, tiles, C]``, U ``[36, C, K]``, one ``torch.bmm``.
* The transforms are separable 1-D passes written as a handful of fused
  ``torch.add(.., alpha=..)`` ops on strided views (14 per 1-D input pass,
  10 per output pass).  For the input transform that beats a tile gather +
  36x36 Kronecker GEMM by 1.5-4x: MKL runs GEMMs with a 36-wide inner
  dimension far below peak, and the gather is an extra copy anyway.
* The image is processed in bands of tile rows sized so that the band's V and
  M stay in cache, with all scratch buffers allocated once per call and the
  input read in place (only the top and bottom bands get a zero-padded copy).
  Without the banding the transforms stream 2.25x-sized intermediates through
  DRAM and first-touch page faults on fresh buffers cost more than the GEMM.
* The bias is added once per tile in the transform domain: for the point x=1
  the output transform is all ones, so adding it to ``M[(1, 1)]`` adds it to
  every output pixel (1/36 of a pass instead of a full pass over the output).
* Backward w.r.t. the input is the full correlation of grad_output with the
  rotated, in/out-transposed kernel, i.e. the same pad-1 Winograd conv with
  precomputed ``U_bwd``; the autograd node saves no tensors.

Measured (2-core AVX2 EPYC, idle, VGG19 at 512x384, fwd + input-bwd): 2.2-2.9x
on the 256/512-channel layers, 1.5-1.8x on the 128-channel ones, 0.9-1.1x
on conv1_2 and 0.2x on conv1_1 (both left to oneDNN by `winogradize`); the
whole stack to relu5_1 ~1.9x.  F(2x2, 3x3) gives 1.3x.  Errors vs an fp64
reference are ~1e-5 (max, relative to max |ref|) against ~2e-6 for oneDNN.

Caveat: one layer is ~50 small multi-threaded ops per band.  When other
processes compete for the cores, every op's OpenMP barrier waits for a
descheduled thread, and this path got 2-8x *slower* than oneDNN's few large
kernels (measured with ~50% of the CPUs busy elsewhere).  Single-threaded
(``torch.set_num_threads(1)``, e.g. one process per core) there are no
barriers and it measured 1.9x faster than oneDNN on the whole stack.  Allocating big tensors on transparent huge pages
(``THP_MEM_ALLOC_ENABLE=1``) removes most first-touch page-fault time for
both paths.

Gradients w.r.t. weight and bias are not computed.  A `WinogradConv2d` whose
weight requires grad, an input that is not CPU float32, or a forward under
autocast all fall back to ``F.conv2d`` (exact, just not faster), so swapping
the layer in never changes what a caller can do.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

Tensor = torch.Tensor

# Scratch budget per band (bytes of the largest transformed buffer).  Measured
# on a 2-core EPYC (512 KiB L2/core, 32 MiB L3): 2-8 MiB all within noise;
# whole-image (no banding) is up to 2.5x slower on the 64/128-channel layers.
DEFAULT_BAND_BYTES = 4 << 20
# A band never has fewer tiles than this: below it the 36 GEMMs get too short
# to amortise re-reading U (37 MiB for a 512x512 layer) once per band.
MIN_BAND_TILES = 256


# --------------------------------------------------------------------------- transforms
#
# Lavin & Gray (2016), interpolation points 0, +-1, +-2, inf for F(4, 3) and
# 0, +-1, inf for F(2, 3).  The symmetric points let the 1-D transforms share
# even/odd partial sums, so B^T costs 14 fused ops instead of 22 multiply-adds.


def _bt_f43(d: Tensor, v: Tensor, tmp: Tensor) -> None:
    """v = B^T d for F(4, 3); d, v: views with the six slots in dim 0 (v may not alias d)."""
    d0, d1, d2, d3, d4, d5 = d
    torch.add(d4, d0, alpha=4, out=v[0]).add_(d2, alpha=-5)
    torch.add(d5, d1, alpha=4, out=v[5]).add_(d3, alpha=-5)
    torch.add(d1, d2, out=tmp)
    torch.add(d3, d4, out=v[1]).add_(tmp, alpha=-4)
    torch.sub(d1, d2, out=tmp)
    torch.sub(d4, d3, out=v[2]).add_(tmp, alpha=4)
    torch.sub(d3, d1, out=tmp)
    torch.sub(d4, d2, out=v[3])
    torch.add(v[3], tmp, alpha=-2, out=v[4])
    v[3].add_(tmp, alpha=2)


def _at_f43(m: Tensor, y: Tensor, t1: Tensor, t2: Tensor) -> None:
    """y = A^T m for F(4, 3); six views in, four out."""
    m0, m1, m2, m3, m4, m5 = m
    torch.add(m1, m2, out=t1)
    torch.add(m3, m4, out=t2)
    torch.add(t1, t2, out=y[0]).add_(m0)
    torch.add(t1, t2, alpha=4, out=y[2])
    torch.sub(m1, m2, out=t1)
    torch.sub(m3, m4, out=t2)
    torch.add(t1, t2, alpha=2, out=y[1])
    torch.add(t1, t2, alpha=8, out=y[3]).add_(m5)


def _bt_f23(d: Tensor, v: Tensor, tmp: Tensor) -> None:
    """v = B^T d for F(2, 3)."""
    d0, d1, d2, d3 = d
    torch.sub(d0, d2, out=v[0])
    torch.add(d1, d2, out=v[1])
    torch.sub(d2, d1, out=v[2])
    torch.sub(d1, d3, out=v[3])


def _at_f23(m: Tensor, y: Tensor, t1: Tensor, t2: Tensor) -> None:
    """y = A^T m for F(2, 3)."""
    m0, m1, m2, m3 = m
    torch.add(m0, m1, out=y[0]).add_(m2)
    torch.sub(m1, m2, out=y[1]).sub_(m3)


@dataclass(frozen=True)
class _Variant:
    m: int  # output tile side
    g: tuple[tuple[float, ...], ...]  # G, [m+2, 3]
    bt: Callable[[Tensor, Tensor, Tensor], None]
    at: Callable[[Tensor, Tensor, Tensor, Tensor], None]

    @property
    def a(self) -> int:  # input tile side
        return self.m + 2

    @property
    def bias_index(self) -> int:
        """Flat index p of the (x=1, x=1) point, where A^T . A is all ones."""
        return self.a + 1


_VARIANTS: dict[int, _Variant] = {
    4: _Variant(
        4,
        (
            (1 / 4, 0.0, 0.0),
            (-1 / 6, -1 / 6, -1 / 6),
            (-1 / 6, 1 / 6, -1 / 6),
            (1 / 24, 1 / 12, 1 / 6),
            (1 / 24, -1 / 12, 1 / 6),
            (0.0, 0.0, 1.0),
        ),
        _bt_f43,
        _at_f43,
    ),
    2: _Variant(2, ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0)), _bt_f23, _at_f23),
}


def transform_weight(weight: Tensor, tile: int = 4) -> Tensor:
    """``[K, C, 3, 3]`` -> U ``[a*a, C, K]`` fp32, computed in fp64 (G has 1/6, 1/24)."""
    var = _VARIANTS[tile]
    g = torch.tensor(var.g, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ar,kcrs,bs->abck", g, weight.detach().double(), g)
    return u.reshape(var.a * var.a, weight.shape[1], weight.shape[0]).float().contiguous()


def backward_weight(weight: Tensor) -> Tensor:
    """Kernel whose pad-1 correlation with grad_output is grad_input: rotate 180, swap in/out."""
    return weight.flip(2, 3).transpose(0, 1)


# --------------------------------------------------------------------------- the convolution


def winograd_conv2d(
    x: Tensor,
    u: Tensor,
    bias: Tensor | None = None,
    tile: int = 4,
    band_bytes: int = DEFAULT_BAND_BYTES,
) -> Tensor:
    """3x3, stride 1, zero-pad 1 convolution of ``x [N, C, H, W]`` with transformed weights ``u``.

    ``u`` is `transform_weight` of a ``[K, C, 3, 3]`` kernel.  Any memory
    format in; the result is ``[N, K, H, W]`` in channels_last.  No autograd
    (see `WinogradConv2d`).

    Long on purpose: the numbered steps of one band loop share a dozen scratch buffers allocated once
    before it (and strided views into them); split into functions they would be passed around whole.
    """
    var = _VARIANTS[tile]
    m, a = var.m, var.a
    n_img, c, h, w = x.shape
    k = u.shape[2]
    if u.shape != (a * a, c, k):
        raise ValueError(f"transformed weight {tuple(u.shape)} does not fit input with {c} channels (tile {tile})")
    th, tw = -(-h // m), -(-w // m)
    wp = m * tw + 2
    xh = x.permute(0, 2, 3, 1)  # NHWC view; contiguous for channels_last input

    # Band = rows of tiles processed together; sized to keep its buffers in cache.
    per_row = n_img * tw
    want = max(MIN_BAND_TILES, band_bytes // (4 * a * a * max(c, k)))
    rows = max(1, min(th, want // per_row))
    tiles = per_row * rows

    new = x.new_empty
    band = new(n_img, m * rows + 2, w, c)  # zero-padded input rows, only for the top/bottom bands
    z = new(a, n_img, rows, wp, c)  # after the H-direction pass
    z[..., 0, :].zero_()  # left / right zero padding: never written below
    z[..., w + 1 :, :].zero_()
    t_in = new(a * tiles * c)
    v = new(a * a * tiles * c)
    mm = new(a * a * tiles * k)
    y1 = new(m * a * tiles * k)  # after the first output pass
    t_out1 = new(a * tiles * k)
    t_out2 = new(a * tiles * k)

    exact = h == m * th and w == m * tw
    out = new(n_img, m * th, m * tw, k)  # NHWC
    for i0 in range(0, th, rows):
        ti = min(rows, th - i0)
        nt = n_img * ti * tw
        # 1. the input rows m*i0-1 .. m*(i0+ti), read in place unless they stick out of
        #    the image: then a zero-padded copy (the first and last band only).
        lo, hi = m * i0 - 1, m * (i0 + ti) + 1
        if lo >= 0 and hi <= h:
            src, base = xh, lo
        else:
            clo, chi = max(lo, 0), min(hi, h)
            src, base = band, 0
            if clo > lo:
                band[:, : clo - lo].zero_()
            if chi < hi:
                band[:, chi - lo : hi - lo].zero_()
            band[:, clo - lo : chi - lo].copy_(xh[:, clo:chi])

        # 2. input transform, H direction: row r of every tile row -> z[alpha] (columns 1..w).
        sn, sr, sw, sc = src.stride()
        d_rows = src.as_strided((a, n_img, ti, w, c), (sr, sn, m * sr, sw, sc), src.storage_offset() + base * sr)
        zb = z[:, :, :ti]
        var.bt(d_rows, zb[..., 1 : w + 1, :], t_in[: n_img * ti * w * c].view(n_img, ti, w, c))

        # 3. input transform, W direction, written straight into V[alpha, beta, tile, c].
        z0, z1, z2 = zb.stride(0), zb.stride(1), zb.stride(2)
        d_cols = zb.as_strided((a, a, n_img, ti, tw, c), (c, z0, z1, z2, m * c, 1))
        vb = v[: a * a * nt * c].view(a, a, n_img, ti, tw, c)
        var.bt(d_cols, vb.transpose(0, 1), t_in[: a * nt * c].view(a, n_img, ti, tw, c))

        # 4. the GEMMs: [a*a, tiles, C] @ [a*a, C, K]; bias at the x=1 point.
        mb = mm[: a * a * nt * k].view(a * a, nt, k)
        torch.bmm(vb.view(a * a, nt, c), u, out=mb)
        if bias is not None:
            mb[var.bias_index].add_(bias)

        # 5. output transform over alpha, then over beta straight into the output.
        mv = mb.view(a, a, nt, k)
        yb = y1[: m * a * nt * k].view(m, a, nt, k)
        var.at(mv, yb, t_out1[: a * nt * k].view(a, nt, k), t_out2[: a * nt * k].view(a, nt, k))
        ob = out[:, m * i0 : m * (i0 + ti)].view(n_img, ti, m, tw, m, k).movedim(4, 0)
        ys = yb.transpose(0, 1).unflatten(2, (n_img, ti, tw)).permute(0, 2, 3, 1, 4, 5)
        t1 = t_out1[: m * nt * k].view(m, n_img, ti, tw, k).permute(1, 2, 0, 3, 4)
        t2 = t_out2[: m * nt * k].view(m, n_img, ti, tw, k).permute(1, 2, 0, 3, 4)
        var.at(ys, ob, t1, t2)

    if not exact:
        out = out[:, :h, :w].contiguous()
    return out.permute(0, 3, 1, 2)


class _WinogradFunction(torch.autograd.Function):
    """Winograd conv whose backward w.r.t. the input is another Winograd conv."""

    @staticmethod
    def forward(ctx, x: Tensor, u_fwd: Tensor, u_bwd: Tensor, bias: Tensor | None, tile: int, band: int) -> Tensor:
        ctx.u_bwd, ctx.tile, ctx.band = u_bwd, tile, band
        return winograd_conv2d(x, u_fwd, bias, tile, band)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        gx = winograd_conv2d(grad, ctx.u_bwd, None, ctx.tile, ctx.band) if ctx.needs_input_grad[0] else None
        return gx, None, None, None, None, None


class WinogradConv2d(nn.Module):
    """Drop-in replacement for a frozen 3x3/stride-1/pad-1 `nn.Conv2d` on CPU fp32.

    Keeps ``weight`` and ``bias`` (same state_dict as the conv) and derives the
    Winograd-domain weights for forward and input-backward from them once;
    `refresh` (also run after `load_state_dict`) re-derives them.  Inputs the
    fast path does not cover fall back to ``F.conv2d``: non-fp32, non-CPU,
    autocast, or a weight that requires grad (gradients w.r.t. weight/bias are
    not implemented by the Winograd path).
    """

    def __init__(self, conv: nn.Conv2d, tile: int = 4, band_bytes: int = DEFAULT_BAND_BYTES) -> None:
        super().__init__()
        reason = unsupported_reason(conv)
        if reason:
            raise ValueError(f"WinogradConv2d: {reason}")
        if tile not in _VARIANTS:
            raise ValueError(f"WinogradConv2d: tile must be one of {sorted(_VARIANTS)}, got {tile}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.tile, self.band_bytes = tile, band_bytes
        self._warned = False
        self.weight = conv.weight
        self.bias = conv.bias
        self.register_buffer("u_fwd", torch.empty(0), persistent=False)
        self.register_buffer("u_bwd", torch.empty(0), persistent=False)
        self.refresh()
        self.register_load_state_dict_post_hook(_refresh_after_load)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the transformed weights from ``weight`` (after editing it in place)."""
        self.u_fwd = transform_weight(self.weight, self.tile)
        self.u_bwd = transform_weight(backward_weight(self.weight), self.tile)

    def _fast_path_ok(self, x: Tensor) -> bool:
        trainable = self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        if trainable and torch.is_grad_enabled():
            if not self._warned:
                warnings.warn(
                    "WinogradConv2d: weight requires grad, using F.conv2d (freeze the weights for the fast path)",
                    stacklevel=3,
                )
                self._warned = True
            return False
        return (
            x.dtype == torch.float32
            and x.device.type == "cpu"
            and x.dim() == 4
            and self.u_fwd.dtype == torch.float32
            and self.u_fwd.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self._fast_path_ok(x):
            return F.conv2d(x, self.weight, self.bias, padding=1)
        bias = None if self.bias is None else self.bias.detach()
        return _WinogradFunction.apply(x, self.u_fwd, self.u_bwd, bias, self.tile, self.band_bytes)

    def extra_repr(self) -> str:
        t = self.tile
        return f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), padding=(1, 1), F({t}x{t}, 3x3)"


def _refresh_after_load(module: WinogradConv2d, _incompatible_keys: object) -> None:
    module.refresh()


# --------------------------------------------------------------------------- swapping layers in


def unsupported_reason(conv: nn.Module) -> str | None:
    """Why ``conv`` cannot become a `WinogradConv2d`, or None if it can."""
    if not isinstance(conv, nn.Conv2d) or isinstance(conv, WinogradConv2d):
        return "not an nn.Conv2d"
    if tuple(conv.kernel_size) != (3, 3):
        return f"kernel {tuple(conv.kernel_size)} is not 3x3"
    if tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1) or conv.groups != 1:
        return "stride, dilation and groups must all be 1"
    if conv.padding not in ((1, 1), "same") or conv.padding_mode != "zeros":
        return "padding must be 1 (zeros)"
    if conv.weight.dtype != torch.float32:
        return f"weight dtype {conv.weight.dtype} is not float32"
    return None


def channel_hmean(conv: nn.Conv2d) -> float:
    """Harmonic mean of in/out channels, 2CK/(C+K): what the Winograd speed-up follows.

    Per tile the GEMM does work proportional to C*K while the transforms move
    data proportional to C+K, so their ratio decides whether the 4x fewer
    multiplies outweigh the extra passes over memory.
    """
    c, k = conv.in_channels, conv.out_channels
    return 2.0 * c * k / (c + k)


# Measured (benchmarks/bench_winograd.py, 2-core AVX2 EPYC, VGG19 at 512x384,
# fwd + input-bwd), speed-up vs channel_hmean: 3 (conv1_1) 0.2x, 64 (conv1_2)
# 0.9-1.1x, 85 (conv2_1) 1.1-1.4x, 128 1.5x, 171 1.75x, 256 2.15x, 341 2.4x,
# 512 2.3-2.9x.  The threshold keeps conv1_2, a wash, on oneDNN.
DEFAULT_MIN_CHANNELS = 80.0


def winogradize(
    module: nn.Module,
    min_channels: float = DEFAULT_MIN_CHANNELS,
    tile: int = 4,
    include: Callable[[str, nn.Conv2d], bool] | None = None,
) -> list[str]:
    """Replace eligible 3x3 convs inside ``module`` (recursively, in place) by `WinogradConv2d`.

    A conv is replaced when `unsupported_reason` is None, its `channel_hmean`
    is >= ``min_channels``, and ``include(name, conv)`` (if given) agrees.
    Returns the qualified names replaced.  Works for ModuleDict, Sequential and
    plain attributes alike.  Call it on a frozen CPU fp32 model; the replaced
    layers still work (via F.conv2d) if the model later moves device/dtype or
    runs under autocast.
    """
    replaced: list[str] = []
    for parent_name, parent in list(module.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if unsupported_reason(child) is not None:
                continue
            assert isinstance(child, nn.Conv2d)
            if channel_hmean(child) < min_channels:
                continue
            if include is not None and not include(full, child):
                continue
            setattr(parent, name, WinogradConv2d(child, tile=tile))
            replaced.append(full)
    return replaced


__all__ = [
    "WinogradConv2d",
    "winogradize",
    "winograd_conv2d",
    "transform_weight",
    "backward_weight",
    "unsupported_reason",
    "channel_hmean",
    "DEFAULT_MIN_CHANNELS",
]
