"""The same trained network, computed faster on a CPU: exact re-expressions of its layers for inference.

`fold_output_conv`: the network's last layer is a 9x9 convolution from `width` channels to 3 at full
resolution; with 3 output channels oneDNN computes it at a fraction of the throughput of the others
(measured on a 2-core CPU in bf16 at 640x360: 20 ms of the network's 78, for a tenth of its
multiply-adds).  The same numbers come out of a stride-2 10x10 convolution to 4 x 3 channels, one per
output pixel phase (the 9x9 kernel placed at each phase's offset in a 10x10 window, zeros elsewhere),
followed by a pixel shuffle: 12 output channels at a quarter of the positions, 7 ms; the compiled
network goes from 78 to 62 ms a frame.  Nothing is retrained and no weight changes (fp32 outputs are
equal to the original's here; any difference is summation order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PhaseConv(nn.Module):
    """A stride-1, unpadded k x k `nn.Conv2d` (k odd) computed as a stride-2 (k+1) x (k+1) convolution to
    4x the channels (output pixel (2i+a, 2j+b) of channel c is channel 4c + 2a + b at (i, j)), then
    `F.pixel_shuffle`.  Inference only: its weights are derived from the original's, not trained."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        co, ci, k, k2 = conv.weight.shape
        if k != k2 or k % 2 == 0 or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.dilation != (1, 1) \
                or conv.groups != 1:
            raise ValueError("PhaseConv: needs an unpadded, stride-1, square, odd-sized, ungrouped convolution")
        w = conv.weight.detach()
        phases = w.new_zeros(co, 2, 2, ci, k + 1, k + 1)
        for a in range(2):
            for b in range(2):
                phases[:, a, b, :, a : a + k, b : b + k] = w
        channels_last = not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(phases.reshape(co * 4, ci, k + 1, k + 1).contiguous(memory_format=fmt),
                                   requires_grad=False)
        bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(co)
        self.bias = nn.Parameter(bias.repeat_interleave(4), requires_grad=False)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] - self.k + 1, x.shape[-1] - self.k + 1
        if h % 2 or w % 2:  # an odd output: one more row/column, cropped below
            x = F.pad(x, (0, w % 2, 0, h % 2))
        y = F.conv2d(x, self.weight, self.bias, stride=2)
        return F.pixel_shuffle(y, 2)[..., :h, :w]


def fold_output_conv(net: nn.Module) -> nn.Module:
    """`net` (a `TransformNet`) with its output convolution computed by `PhaseConv`, in place (a network
    already folded is returned as it is).  Before the first call of a compiled `Stylizer`: torch.compile
    traces the network then."""
    if isinstance(getattr(net, "out", None), nn.Conv2d):
        net.out = PhaseConv(net.out)
    return net
