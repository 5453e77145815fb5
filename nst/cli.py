"""`nst` command line: stylize, backbones, evaluate (and `grid`/... when the flows are installed).

Errors caused by input print one line (``nst: error: ...``) and exit with 2;
nothing is written unless the run finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Sequence

from . import methods
from .errors import NSTError

EXIT_INPUT = 2
EXIT_FAILED = 1  # the machine or a service failed (disk full, tracking server gone): not the input
EXIT_INTERRUPTED = 130

#: Entry-point group of packages that add subcommands: ``add_commands(subparsers)`` (the grid commands live
#: in `flows`, which imports Prefect/MLflow, so nst never imports it by name).
COMMANDS_GROUP = "nst.commands"


def _default(field: str):
    """The engine's default for a StyleConfig field (the CLI never restates defaults)."""
    from .config import StyleConfig

    return StyleConfig.model_fields[field].default


def _add_stylize(sub) -> None:
    # Long but flat: one statement per flag, in the order `--help` shows them.
    p = sub.add_parser(
        "stylize",
        help="optimisation-based style transfer of one image",
        description="Stylise a content image with one or several style images (Gatys et al.).",
    )
    d = _default
    p.add_argument("--content", required=True, help="content image file")
    p.add_argument("--style", action="append", required=True,
                   help="style image file (repeat for several); with --regions: REGION=IMAGE or REGION=keep")
    p.add_argument("--style-weights", nargs="+", type=float, help="blend weights, one per --style")
    p.add_argument("--multi-style", choices=("blend", "sequential"),
                   help="several styles: one weighted loss, or style A then B on A's output "
                        f"(default {d('multi_style')})")
    p.add_argument("--out", required=True, help="output image (PNG)")
    p.add_argument("--backbone", help=f"feature network, see `nst backbones` (default {d('backbone')})")
    p.add_argument("--weights", help="backbone weights file, or 'random' (timing studies only)")
    p.add_argument("--pooling", choices=("max", "avg"), help=f"default {d('pooling')}")
    p.add_argument("--size", type=int, help=f"longest side of the output in pixels (default {d('size')})")
    p.add_argument("--style-scale", type=float,
                   help=f"style image size relative to the output (default {d('style_scale')})")
    p.add_argument("--steps", type=int, help=f"optimisation steps (default {d('steps')})")
    p.add_argument("--optimizer", choices=("lbfgs", "adam"), help=f"default {d('optimizer')}")
    p.add_argument("--scales", nargs="+", type=_scale_stage, metavar="FRACTION:STEPS",
                   help="coarse-to-fine stages before the full-size --steps, e.g. 0.25:60 0.5:40; 'none' = one scale "
                        f"(default {' '.join(f'{f:g}:{n}' for f, n in d('scales') or ()) or 'none'})")
    p.add_argument("--scale-detail", action=argparse.BooleanOptionalAction, default=None,
                   help="start each finer scale with the content's detail added back (default "
                        f"{'on' if d('scale_detail') else 'off'})")
    p.add_argument("--style-loss", choices=("gram", "meancov"), help=f"default {d('style_loss')}")
    p.add_argument("--lbfgs-history", type=int, help=f"L-BFGS history size (default {d('lbfgs_history')})")
    p.add_argument("--lbfgs-clamp", action=argparse.BooleanOptionalAction, default=None,
                   help="L-BFGS keeps the image in [0, 1] at every step (default "
                        f"{'on' if d('lbfgs_clamp') else 'off'}; off: unconstrained, clamped once at the end)")
    p.add_argument("--lbfgs-first-step", type=_float_or_none, metavar="RMS",
                   help="L-BFGS: RMS displacement per value of each stage's first step, and of any step taken "
                        f"before a curvature pair is kept (default {d('lbfgs_first_step'):g}; 'none': torch's "
                        "rule, min(1, 1/|g|_1), unstable in bf16)")
    p.add_argument("--weight-steps", type=float, metavar="P",
                   help="coarse-to-fine: full-size steps x (style weight / 12) ** P above weight 12, so larger "
                        f"weights get the steps they need (default {d('weight_steps'):g}; 0 = always --steps)")
    p.add_argument("--ema-decay", type=float, help="Adam: output the iterate average with this decay (e.g. 0.99)")
    p.add_argument("--lr", type=float, help="learning rate (default 1 for L-BFGS, 0.02 for Adam)")
    p.add_argument("--content-weight", type=float, help=f"default {d('content_weight')}")
    p.add_argument("--style-weight", type=float, help=f"default {d('style_weight')}")
    p.add_argument("--tv-weight", type=float, help=f"default {d('tv_weight')}")
    p.add_argument("--content-layers", nargs="+", help="default: the backbone's (relu4_2 for VGG)")
    p.add_argument("--style-layers", nargs="+", help="default: the backbone's (relu1_1 .. relu5_1 for VGG)")
    p.add_argument("--init", help="content, noise, or an image file (default content)")
    p.add_argument("--preserve-color", choices=("luminance", "histogram"), help="keep the content's colours")
    p.add_argument("--photoreal-weight", type=float,
                   help="Luan et al.'s photorealism regulariser (photo-to-photo); ~1e4 recommended, 0 = off (default)")
    p.add_argument("--photoreal-epsilon", type=float,
                   help=f"its matting Laplacian epsilon (default {d('photoreal_epsilon')})")
    p.add_argument("--photoreal-two-stage", action="store_true", default=None,
                   help="plain transfer for half the steps, then the regularised one from its result")
    p.add_argument("--seed", type=int, help=f"default {d('seed')}")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="autocast for the network; auto = bf16 where the hardware has it, else fp32")
    p.add_argument("--max-memory", help="memory budget, e.g. 8GB: a size whose estimate exceeds it is optimised in "
                   "tiles (default: the device's memory)")
    p.add_argument("--estimate", action="store_true",
                   help="print the expected peak memory, time per step and tiling of each scale; run nothing")
    p.add_argument("--save-every", type=int, default=0, help="also save the image every N steps next to --out")
    p.add_argument("--evaluate", action="store_true", help="print the fixed evaluator's scores of the result")
    _add_evaluator_flag(p, "with --evaluate: ")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("regions (a different style per region; see nst.regions)")
    g.add_argument("--regions", help="coco:CAT[,CAT..] (needs --coco), person (offline segmenter), "
                   "deeplab[:CLASS,..], or a label image file (PNG)")
    g.add_argument("--coco", help="COCO instances JSON holding the content image (matched by file name)")
    g.add_argument("--method", default="guided-gram", choices=methods.names("regions"),
                   help="how regions get their styles")
    g.add_argument("--feather", type=float, help="soft region border in px (portion: blend width, default 3%%)")
    g.add_argument("--seg-weights", help="DeepLabv3 weights file (default: the torch hub cache)")
    g.add_argument("--save-regions", action="store_true", help="also save the region map as <out>_regions.png")
    p.set_defaults(func=cmd_stylize)


#: CLI options that map one-to-one onto StyleConfig fields.
CONFIG_OPTIONS = (
    "backbone", "weights", "pooling", "size", "style_scale", "steps", "optimizer", "lr", "content_weight",
    "style_weight", "tv_weight", "content_layers", "style_layers", "style_weights", "multi_style", "init",
    "preserve_color", "seed", "device", "precision", "scales", "scale_detail", "style_loss", "lbfgs_history",
    "lbfgs_clamp", "lbfgs_first_step", "weight_steps", "ema_decay", "photoreal_weight", "photoreal_epsilon",
    "photoreal_two_stage", "max_memory",
)


def _float_or_none(value: str):
    """A number, or ``none`` (kept as the string: an option left out is None; `cmd_stylize` maps it)."""
    if value.lower() in ("none", "off", "null"):
        return "none"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}': expected a number or none") from None


def _scale_stage(value: str):
    """``FRACTION:STEPS`` -> (fraction, steps); ``none`` -> None (one scale)."""
    if value.lower() in ("none", "off", "null"):
        return None
    frac, sep, steps = value.partition(":")
    try:
        return (float(frac), int(steps))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}': expected FRACTION:STEPS (e.g. 0.25:60) or none") from None


def cmd_stylize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .config import make_config
    from .images import load_image, save_image
    from .optimize import run_steps, style_size, stylize

    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise NSTError(f"--out {out}: is a directory")
    values = {k: getattr(args, k) for k in CONFIG_OPTIONS if getattr(args, k, None) is not None}
    if values.get("scales") is not None:  # `--scales none`: one scale
        values["scales"] = None if None in values["scales"] else tuple(values["scales"])
    if values.get("lbfgs_first_step") == "none":  # torch's first-step rule
        values["lbfgs_first_step"] = None
    config = make_config(**values)
    if args.regions is not None or any(_named_style(s) for s in args.style):
        return _stylize_regions(args, config, out)
    for opt in ("coco", "feather", "seg_weights"):
        if getattr(args, opt) is not None:
            raise NSTError(f"--{opt.replace('_', '-')} needs --regions")
    # Load everything first: a bad file fails before any optimisation starts.
    content = load_image(args.content, size=config.size)
    styles = [load_image(s, size=style_size(content, config.style_scale)) for s in args.style]
    if config.photoreal_two_stage and not config.photoreal_weight:
        raise NSTError("--photoreal-two-stage needs --photoreal-weight > 0")
    if config.init not in ("content", "noise"):
        load_image(config.init)
    if args.estimate:
        return _print_estimate(config, tuple(content.shape[-2:]))
    from .tiling import estimate_run

    estimate_run(config, tuple(content.shape[-2:]), speed=False)  # a budget that cannot fit: one line, no work
    stages = len(styles) if config.multi_style == "sequential" else 1
    steps_total = run_steps(config, tuple(content.shape[-2:])) * stages
    bar = tqdm(total=steps_total, desc="stylize", unit="step", disable=args.quiet, dynamic_ncols=True)

    def on_step(info) -> None:
        bar.update(info.step - bar.n)
        bar.set_postfix({k: f"{v:.3g}" for k, v in info.losses.items() if k in ("content", "style", "total")})
        if info.image is not None and args.save_every and info.step != steps_total:
            save_image(info.image, out.with_name(f"{out.stem}_step{info.step:05d}.png"))

    try:
        result = stylize(content, styles, config, callback=on_step, image_every=args.save_every)
    finally:
        bar.close()
    save_image(result.image, out)
    _report(result, out, args.evaluate, content, styles, config, args.evaluator)
    return 0


def _report(result, out: Path, evaluate_it: bool, content, styles, config, evaluator: str = "fixed") -> None:
    """What `nst stylize` prints after saving: time, tiling and peak memory, evaluator scores if asked."""
    from .evaluate import evaluate

    t = result.timings
    print(
        f"saved {out} ({result.image.shape[-1]}x{result.image.shape[-2]}) in {t['total_s']:.1f}s, "
        f"{t['s_per_step']:.3f} s/step on {result.info['device']} ({result.info['precision']})"
    )
    if result.info.get("tiled_scales"):
        from .hardware import peak_rss_bytes

        peak = peak_rss_bytes()
        est = max(st.get("estimate_mb", 0) for st in result.info["stages"])
        print(f"tiled scales {', '.join(f'{w}x{h}' for h, w in result.info['tiled_scales'])}: peak memory "
              f"{peak / 2**30:.2f} GB (process RSS; estimate {est / 1024:.2f} GB)")
    if evaluate_it:
        scores = evaluate(result.image, content, styles, config.style_weights, evaluator=evaluator)
        extra = {}
        if config.photoreal_weight:
            from .photoreal import photoreal_energy

            extra["photoreal_energy"] = photoreal_energy(result.image, content, config.photoreal_epsilon)
        print(json.dumps({**scores.to_dict(), **extra}, indent=None))


def _print_estimate(config, hw) -> int:
    """`nst stylize --estimate`: one line per scale (a scale that cannot fit is the usual one-line error)."""
    from .tiling import estimate_run

    for est, _ in estimate_run(config, hw):
        print(est.line())
    return 0


def _named_style(value: str) -> tuple[str, str] | None:
    """``REGION=IMAGE`` -> (region, image); None for a plain path (even one containing '=')."""
    if "=" not in value or Path(value).exists():
        return None
    region, path = value.split("=", 1)
    return (region.strip(), path.strip()) if region.strip() and "/" not in region else None


def _stylize_regions(args: argparse.Namespace, config, out: Path) -> int:
    """`nst stylize --regions ...`: region map from a source, styles per region, one region method."""
    from tqdm import tqdm

    from .images import load_image, save_image
    from .regions import DEFAULT_KEY, KEEP, stylize_regions
    from .segment import colorize, region_map

    if args.regions is None:
        raise NSTError("--style REGION=IMAGE needs --regions (coco:CAT, person, deeplab or a mask file)")
    if args.style_weights or args.save_every:
        raise NSTError("--style-weights and --save-every do not apply to --regions (one style per region)")
    region_styles: dict[str, object] = {}
    for value in args.style:
        named = _named_style(value)
        key, path = named if named else (DEFAULT_KEY, value)
        if key in region_styles:
            what = "plain --style" if key == DEFAULT_KEY else f"--style {key}=..."
            raise NSTError(f"{what} given twice")
        region_styles[key] = path
    content = load_image(args.content, size=config.size)
    for path in region_styles.values():
        if path != KEEP:
            load_image(path)  # fail on a bad file before any work
    rm = region_map(args.regions, content, content_path=args.content, coco=args.coco,
                    weights=args.seg_weights, device="cpu")
    runs = 1
    if args.method == "per-region-composite":
        runs = max(1, len({str(Path(v).resolve()) for v in region_styles.values() if v != KEEP}))
    bar = tqdm(total=config.steps * runs, desc=args.method, unit="step", disable=args.quiet, dynamic_ncols=True)

    def on_step(info) -> None:
        bar.total = info.total_steps
        bar.update(info.step - bar.n)
        bar.set_postfix({k: f"{v:.3g}" for k, v in info.losses.items() if k in ("content", "style", "total")})

    try:
        result = stylize_regions(content, rm, region_styles, args.method, config, feather=args.feather,
                                 callback=on_step)
    finally:
        bar.close()
    save_image(result.image, out)
    if args.save_regions:
        save_image(colorize(result.region_map), out.with_name(f"{out.stem}_regions.png"))
    t = result.timings
    styles = ", ".join(f"{k}={v}" for k, v in result.info["region_styles"].items())
    print(f"saved {out} ({result.image.shape[-1]}x{result.image.shape[-2]}) with {args.method} [{styles}] "
          f"in {t['total_s']:.1f}s, {t['s_per_step']:.3f} s/step on {result.info['device']}")
    if args.evaluate:
        from .regions import leakage

        try:
            print(json.dumps({"leakage": leakage(result.image, result.region_map, region_styles)}))
        except NSTError as exc:  # one style only: nothing can leak
            print(f"leakage: not measured ({exc})")
    return 0


def _add_backbones(sub) -> None:
    p = sub.add_parser("backbones", help="list backbones, their layers and where their weights come from")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_backbones)


def cmd_backbones(args: argparse.Namespace) -> int:
    from . import backbones

    rows = []
    for name, s in backbones.REGISTRY.items():
        layers = list(backbones.layer_names(name))
        rows.append(
            {
                "name": name,
                "description": s.description,
                "weights": backbones.weights_status(name),
                "content_layers": list(s.content_layers),
                "style_layers": list(s.style_layers),
                "layers": layers,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(f"{r['name']}: {r['description']}")
        print(f"  weights: {r['weights']}")
        print(f"  default content layers: {', '.join(r['content_layers'])}; "
              f"style layers: {', '.join(r['style_layers'])}")
        print(f"  layers: {' '.join(r['layers'])}")
    return 0


def _add_evaluator_flag(p, prefix: str = "") -> None:
    """``--evaluator``: which of `nst.evaluate.EVALUATORS` scores (the names spelled out: nst.cli stays light)."""
    p.add_argument("--evaluator", choices=("fixed", "robust"), default="fixed",
                   help=prefix + "fixed (scores comparable with every earlier one) or robust (style distance over "
                   "three style scales, sliced Wasserstein and colour distances; its own id)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score an output with an evaluator (the fixed one unless --evaluator)")
    p.add_argument("--output", required=True, help="stylised image")
    p.add_argument("--content", required=True)
    p.add_argument("--style", action="append", required=True)
    p.add_argument("--style-weights", nargs="+", type=float)
    _add_evaluator_flag(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .images import load_image

    scores = evaluate(
        load_image(args.output), load_image(args.content), [load_image(s) for s in args.style], args.style_weights,
        evaluator=args.evaluator,
    )
    print(json.dumps(scores.to_dict()))
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line naming the flag (and where help is), exit 2 — not the whole usage text."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_INPUT, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nst", description="nst-lab: neural style transfer experiments")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_stylize(sub)
    _add_backbones(sub)
    _add_evaluate(sub)
    from .fast.cli import add_commands as add_fast_commands

    for add_commands in plugin_commands():  # the grid commands first, as before
        add_commands(sub)
    add_fast_commands(sub)
    return parser


def plugin_commands() -> list:
    """The ``add_commands`` functions of the installed `COMMANDS_GROUP` entry points, by name; one whose
    packages are missing (a core-only install without Prefect/MLflow) is simply absent."""
    found = []
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            found.append(ep.load())
        except ImportError as exc:
            if exc.name and exc.name.split(".")[0] in ("flows", "tasks", "prefect", "mlflow"):
                continue
            raise
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NSTError as exc:
        print(f"nst: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("nst: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except OSError as exc:  # disk full, unwritable folder, a service gone: the machine's fault, not the input's
        if os.environ.get("NST_DEBUG"):
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"nst: error: {where}{exc.strerror or exc} (errno {exc.errno})", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # anything else still gets one line; NST_DEBUG=1 shows the traceback
        if os.environ.get("NST_DEBUG"):
            raise
        msg = " ".join(str(exc).split())[:500]
        print(f"nst: error: {type(exc).__name__}: {msg} (NST_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
