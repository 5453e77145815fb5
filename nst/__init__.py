"""nst: neural style transfer as a plain library (no orchestration or tracking imports).

    from nst import stylize, StyleConfig, evaluate, load_image, save_image
    result = stylize("content.jpg", ["style.jpg"], StyleConfig(size=256, steps=200))
    save_image(result.image, "out.png")
"""

from .config import StyleConfig, make_config
from .errors import ConfigError, DivergedError, ImageError, NSTError, WeightsError
from .evaluate import Evaluator, Scores, evaluate
from .images import load_image, save_image
from .optimize import StepInfo, StyleResult, stylize

__all__ = [
    "StyleConfig",
    "make_config",
    "stylize",
    "StepInfo",
    "StyleResult",
    "evaluate",
    "Evaluator",
    "Scores",
    "load_image",
    "save_image",
    "NSTError",
    "ImageError",
    "ConfigError",
    "WeightsError",
    "DivergedError",
]

__version__ = "0.1.0"
