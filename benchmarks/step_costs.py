"""Per-step costs of pastiche and of nst at every scale of its default schedule, in one process.

Used to convert step counts into time when the machine is shared (wall-clock figures are then
distorted, but the costs of the different steps, measured back to back in one process, keep their
proportions much better; CPU time per step is printed next to wall time).  For each scale it runs a
few L-BFGS steps of nst (the real `stylize` loop: network, losses, optimiser) and a few of pastiche
at the full size, interleaved, and keeps the fastest repeat.  The last line projects nst's default
run (all scales, plus its target features) in pastiche steps and as a ratio to 300 of them.

    python benchmarks/step_costs.py --pair tubingen.jpg:starry_night.jpg --size 512

``--hardware`` prints instead how far one step is from the machine: the FLOPs of one loss evaluation at
the full size (the truncated VGG19 forward, its backward to the image, and the Gram matmuls), counted
analytically from the shapes of the convolutions the engine's own loss network runs (forward hooks) and
checked against PyTorch's FlopCounterMode; this machine's measured matmul (a large GEMM) and convolution
(a VGG-sized 3x3 conv) throughput in bf16 and fp32; and the fraction of it a real nst step reaches
(its FLOPs x evaluations per step / its wall time).  On one thread unless --threads:

    OMP_NUM_THREADS=1 python benchmarks/step_costs.py --hardware --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nst import backbones, load_image, stylize  # noqa: E402
from nst.config import make_config  # noqa: E402
from nst.data import image  # noqa: E402
from nst.features import DEFAULT_CACHE  # noqa: E402
from nst.optimize import pyramid, style_size  # noqa: E402


def nst_step_cost(content, style, config, hw, steps: int) -> tuple[float, float]:
    """(wall, cpu) seconds per step at size `hw` (targets cached beforehand, not counted)."""
    c = torch.nn.functional.interpolate(content, size=hw, mode="bilinear", antialias=True, align_corners=False)
    cfg = config.replace(size=max(hw), scales=None, steps=1)
    stylize(c, [style], cfg)  # warm: targets into the cache, allocator
    cfg = cfg.replace(steps=steps)
    p = time.process_time()
    r = stylize(c, [style], cfg)
    return r.timings["optimize_s"] / steps, (time.process_time() - p) / steps


def pastiche_step_cost(content: Path, style: Path, size: int, style_px: int, steps: int) -> tuple[float, float]:
    from pastiche.pastiche import PasticheArtist

    artist = PasticheArtist(str(content), [str(style)], device="cpu", size=size, style_size=style_px)
    artist.draw()
    w, p = time.perf_counter(), time.process_time()
    for _ in range(steps):
        artist.draw()
    return (time.perf_counter() - w) / steps, (time.process_time() - p) / steps


# --------------------------------------------------------------------------- --hardware


def analytic_flops(config, hw: tuple[int, int]) -> dict[str, float]:
    """FLOPs of one loss evaluation at `hw`, from the shapes of the convolutions the engine's loss network
    (`nst.features.loss_network`, the layers and truncation `stylize` uses) really runs.

    conv forward: 2 x out_pixels x C_out x C_in x k x k per layer (multiply-adds x 2); backward: the
    gradient to the input only (frozen weights), the same count again; Grams: 2 x C^2 x HW per style
    layer forward and one matmul of that size backward (`nst.losses`' one-matmul Gram backward)."""
    from nst.features import loss_network

    net = loss_network(config.replace(device="cpu"))
    convs: list[float] = []

    def hook(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        convs.append(2.0 * out.numel() * mod.in_channels // mod.groups * k)

    handles = [m.register_forward_hook(hook) for _, stage in net.extractor.stages for m in stage.modules()
               if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            feats = net.extractor(torch.rand(1, 3, *hw))
    finally:
        for h in handles:
            h.remove()
    gram = sum(2.0 * f.shape[1] ** 2 * f.shape[2] * f.shape[3] for k, f in feats.items() if k in net.style_layers)
    conv = sum(convs)
    return {"conv_fwd": conv, "conv_bwd": conv, "gram_fwd": gram, "gram_bwd": gram, "convs": float(len(convs)),
            "total": 2 * conv + 2 * gram, "precision": net.precision}


def counted_flops(config, content, style) -> float:
    """The same evaluation's FLOPs as PyTorch's FlopCounterMode counts them (a check of `analytic_flops`):
    one loss and its gradient to the image, through the engine's loss function."""
    from torch.utils.flop_counter import FlopCounterMode

    from nst.features import loss_network
    from nst.losses import gram_matrix

    net = loss_network(config.replace(device="cpu"))
    with torch.no_grad():
        fs = net.extractor(style)
        targets = {k: gram_matrix(fs[k]) for k in net.style_layers}
    x = content.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        f = net.extractor(x)
        loss = sum((gram_matrix(f[k]) - targets[k]).pow(2).mean() for k in net.style_layers)
        loss = loss + sum(f[k].float().pow(2).mean() for k in net.content_layers)
        loss.backward()
    return float(fc.get_total_flops())


def _best_time(fn, repeats: int) -> float:
    fn()  # warm: allocator, oneDNN primitive cache
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def throughput(repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of this machine: a 2048^3 GEMM, and a 3x3 conv of VGG19's conv2_2 at a 512x384 image
    (128 -> 128 channels at 256x192, channels_last, as the engine runs it), in fp32 and bf16."""
    n = 2048
    out: dict[str, float] = {}
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        out[f"matmul_{name}"] = 2 * n**3 / _best_time(lambda a=a, b=b: a @ b, repeats) / 1e9
        conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(dtype).to(memory_format=torch.channels_last)
        x = torch.randn(1, 128, 192, 256).to(dtype).contiguous(memory_format=torch.channels_last)
        flops = 2 * 128 * 128 * 9 * 192 * 256
        with torch.no_grad():
            out[f"conv_{name}"] = flops / _best_time(lambda conv=conv, x=x: conv(x), repeats) / 1e9
    return out


def hardware(content, style, config, steps: int) -> int:
    """The --hardware report (see the module docstring)."""
    from nst.hardware import cpu_isa, cpu_model

    hw = tuple(content.shape[-2:])
    fl = analytic_flops(config, hw)
    counted = counted_flops(config.replace(precision="fp32"), content, style)
    cfg = config.replace(scales=None, steps=1)
    stylize(content, [style], cfg)  # warm: targets cached, allocator
    r = stylize(content, [style], cfg.replace(steps=steps))
    evals = sum(st["evals"] for st in r.info["stages"]) / steps
    s_step = r.timings["optimize_s"] / steps
    tp = throughput()
    prec = r.info["precision"]
    achieved = fl["total"] * evals / s_step / 1e9
    print(f"{cpu_model()} ({', '.join(cpu_isa())}); {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
          f"one {hw[1]}x{hw[0]} step of the engine ({config.backbone}, {config.pooling} pooling, {prec})")
    print(f"FLOPs per loss evaluation: conv forward {fl['conv_fwd'] / 1e9:.1f} G ({int(fl['convs'])} convs), "
          f"conv backward (to the image) {fl['conv_bwd'] / 1e9:.1f} G, Grams {fl['gram_fwd'] / 1e9:.2f} G "
          f"+ {fl['gram_bwd'] / 1e9:.2f} G backward; total {fl['total'] / 1e9:.1f} G "
          f"(FlopCounterMode: {counted / 1e9:.1f} G)")
    print("throughput (GFLOP/s): " + ", ".join(f"{k} {v:.1f}" for k, v in tp.items()))
    peak_conv = tp["conv_bf16" if prec == "bf16" else "conv_fp32"]
    peak_mm = tp["matmul_bf16" if prec == "bf16" else "matmul_fp32"]
    print(f"nst step: {s_step:.3f} s wall, {evals:.2f} evaluations/step -> {achieved:.1f} GFLOP/s = "
          f"{achieved / peak_conv:.2f} of the {prec} conv throughput, {achieved / peak_mm:.2f} of the {prec} "
          f"matmul throughput")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", default="tubingen.jpg:starry_night.jpg")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3, help="steps per measurement")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pastiche-steps", type=int, default=300)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--hardware", action="store_true",
                    help="FLOPs of a step, the machine's matmul/conv throughput and the fraction a step reaches")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    c_name, s_name = args.pair.split(":")
    c_path, s_path = Path(image(c_name)), Path(image(s_name))
    config = make_config(size=args.size, device="cpu")
    content = load_image(c_path, size=args.size)
    s_px = style_size(content, config.style_scale)
    style = load_image(s_path, size=s_px)
    backbones.get_backbone(config.backbone, config.pooling, config.weights, torch.device("cpu"))
    if args.hardware:
        return hardware(content, style, config, args.steps)
    sched = pyramid(config, tuple(content.shape[-2:]))
    costs: dict[tuple[int, int], tuple[float, float]] = {}
    pastiche = (float("inf"), float("inf"))
    for _ in range(args.repeats):
        p = pastiche_step_cost(c_path, s_path, args.size, s_px, args.steps)
        pastiche = (min(pastiche[0], p[0]), min(pastiche[1], p[1]))
        for hw, _n in sched:
            st = nst_step_cost(content, style, config, hw, args.steps)
            old = costs.get(hw, (float("inf"), float("inf")))
            costs[hw] = (min(old[0], st[0]), min(old[1], st[1]))
    DEFAULT_CACHE.clear()
    probe = stylize(content, [style], config.replace(steps=0, scales=tuple((f, 0) for f, _ in config.scales or ())))
    targets_s = probe.timings["targets_s"]  # full-size targets only (coarse ones are cheaper still)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{c_name} at {content.shape[-1]}x{content.shape[-2]}")
    print(f"pastiche at full size: {pastiche[0]:.3f} s/step wall, {pastiche[1]:.3f} s/step CPU")
    total_w = total_c = 0.0
    for hw, n in sched:
        w, cpu = costs[hw]
        total_w += n * w
        total_c += n * cpu
        print(f"nst {hw[1]}x{hw[0]}: {w:.3f} s/step wall ({w / pastiche[0]:.3f} pastiche steps), "
              f"{cpu:.3f} s/step CPU ({cpu / pastiche[1]:.3f}); {n} steps by default")
    n_scales = len(sched)
    proj_w = total_w + targets_s * n_scales
    print(f"default run ~ {proj_w:.1f}s wall = {proj_w / pastiche[0]:.1f} pastiche steps "
          f"(targets ~{targets_s:.2f}s per scale, counted at full size); ratio to {args.pastiche_steps} pastiche "
          f"steps: {proj_w / (args.pastiche_steps * pastiche[0]):.3f} "
          f"(CPU time: {total_c / (args.pastiche_steps * pastiche[1]):.3f} without targets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
