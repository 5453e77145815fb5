"""Typed configuration shared by the CLI, experiments.yaml and the tasks.

One pydantic model, `StyleConfig`, holds every engine option with its default.
Unknown keys and invalid values are rejected with the field name in the
message, so a grid cell or a CLI call fails before any work starts.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

Optimizer = Literal["lbfgs", "adam"]
Pooling = Literal["max", "avg"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PreserveColor = Optional[Literal["luminance", "histogram"]]
MultiStyle = Literal["blend", "sequential"]
StyleLossKind = Literal["gram", "meancov"]

#: The default coarse-to-fine schedule: 40 L-BFGS steps at a quarter of the size, 20 at half, then
#: `steps` (10) at the full size, with style weight 12.  Chosen by benchmarks/time_to_quality.py
#: (docs/performance.md, "Time to quality").
DEFAULT_SCALES = ((0.25, 40), (0.5, 20))
#: The default style weight, and the weight above which `StyleConfig.weight_steps` adds full-size steps.
DEFAULT_STYLE_WEIGHT = 12.0
#: Plain Gatys et al. (one scale, average pooling, 500 full-size steps): the seed reports' setting.  One scale,
#: so its step count is its own (`StyleConfig.weight_steps` lengthens the coarse-to-fine schedule only).
PLAIN_GATYS = {"scales": None, "scale_detail": False, "pooling": "avg", "steps": 500, "style_weight": 20.0}


class StyleConfig(BaseModel):
    """Every setting of one optimisation-based style transfer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: str = "vgg19"
    weights: Optional[str] = Field(
        None, description="backbone weights: None = the backbone's default source, 'random', or a file path"
    )
    pooling: Pooling = Field("max", description="max (the network as trained; measured best) or avg (Gatys et al.)")
    size: int = Field(512, gt=0, le=8192, description="longest side of the output, pixels")
    style_scale: float = Field(1.0, gt=0, le=8, description="style image size relative to the output's")
    steps: int = Field(
        10, ge=0, le=100_000,
        description="optimisation steps at the full size, after the coarse `scales` stages (per style when sequential)",
    )
    optimizer: Optimizer = "lbfgs"
    lr: Optional[float] = Field(None, gt=0, description="learning rate (default: 1.0 for L-BFGS, 0.02 for Adam)")
    lbfgs_history: int = Field(100, gt=0)
    lbfgs_line_search: bool = Field(False, description="strong-Wolfe line search in L-BFGS (more evaluations per step)")
    lbfgs_clamp: bool = Field(
        True,
        description="L-BFGS: keep the image in [0, 1] at every step (projected steps; Adam always clamps), so the "
        "optimum found is one the saved image can hold; false: unconstrained, clamped once at the end (issue 14)",
    )
    lbfgs_first_step: Optional[float] = Field(
        1e-2, gt=0, le=1,
        description="L-BFGS: each stage's first step moves the image by this RMS per value (range 0..1), as does "
        "every step while no curvature pair has been kept, and pairs whose gradient change is mostly noise "
        "(cosine to the step < 0.01) are not kept; none: torch's rule (first step min(1, 1/|g|_1), every pair "
        "with y.s > 0 kept), whose tiny steps made bf16 runs diverge (issue 14)",
    )
    ema_decay: Optional[float] = Field(
        None, ge=0, lt=1, description="Adam: return an exponential moving average of the iterates (e.g. 0.99)"
    )
    scales: Optional[tuple[tuple[float, int], ...]] = Field(
        DEFAULT_SCALES,
        description="coarse-to-fine: (fraction of size, steps) stages run before the full-size `steps`; "
        "stages under 64 px are skipped; None = one scale",
    )
    scale_detail: bool = Field(
        True,
        description="coarse-to-fine: start each finer scale from the upsampled result plus the content's detail "
        "that the coarser scale lacked (content minus its upsampled downscaled copy)",
    )
    style_loss: StyleLossKind = Field("gram", description="gram (Gatys) or meancov (feature mean and covariance)")
    content_weight: float = Field(1.0, ge=0)
    style_weight: float = Field(
        DEFAULT_STYLE_WEIGHT, ge=0, description="measured default (issue 7); the seed reports used 20"
    )
    weight_steps: float = Field(
        0.5, ge=0, le=2,
        description="coarse-to-fine: the full-size steps grow as steps x (style_weight / 12) ** weight_steps above "
        "the default weight (L-BFGS is blind to the loss's scale: a larger weight moves the optimum, only more steps "
        "get there; issue 14); 0, or one scale (scales none): always `steps`",
    )
    tv_weight: float = Field(0.0, ge=0)
    content_layers: Optional[tuple[str, ...]] = None
    style_layers: Optional[tuple[str, ...]] = None
    content_layer_weights: Optional[tuple[float, ...]] = None
    style_layer_weights: Optional[tuple[float, ...]] = None
    style_weights: Optional[tuple[float, ...]] = Field(
        None, description="blend weights of several styles (normalised to sum 1)"
    )
    multi_style: MultiStyle = "blend"
    init: str = Field("content", description="content, noise, or an image file path")
    preserve_color: PreserveColor = None
    photoreal_weight: float = Field(
        0.0, ge=0, description="Luan et al.'s photorealism regulariser (matting Laplacian), 0 = off; nst.photoreal"
    )
    photoreal_epsilon: float = Field(1e-7, gt=0, description="matting Laplacian epsilon (images in [0, 1])")
    photoreal_two_stage: bool = Field(
        False, description="plain transfer for half the steps, then the regularised one from it (needs the weight)"
    )
    seed: int = 0
    device: str = "auto"
    precision: Precision = "auto"
    max_memory: Optional[int] = Field(
        None, gt=0,
        description="memory budget in bytes (or a string such as 8GB, binary units): a scale whose estimate "
        "exceeds it is optimised in tiles (nst.tiling); None = untiled unless the device's memory is too small",
    )

    @field_validator("max_memory", mode="before")
    @classmethod
    def _bytes(cls, v):
        if v is None or (isinstance(v, int) and not isinstance(v, bool)):
            return v
        from .units import parse_bytes

        return parse_bytes(v)

    @field_validator("content_layer_weights", "style_layer_weights", "style_weights")
    @classmethod
    def _non_negative(cls, v):
        if v is not None:
            if any(w < 0 for w in v):
                raise ValueError("weights must be >= 0")
            if sum(v) <= 0:
                raise ValueError("weights must not all be zero")
        return v

    @field_validator("scales")
    @classmethod
    def _scales(cls, v):
        if v is not None:
            fractions = [f for f, _ in v]
            if any(not 0 < f < 1 for f in fractions):
                raise ValueError("each scale is a fraction of size in (0, 1); the full size comes last by itself")
            if any(a >= b for a, b in zip(fractions, fractions[1:])):
                raise ValueError("scales must grow from coarse to fine")
            if any(n < 0 for _, n in v):
                raise ValueError("steps per scale must be >= 0")
        return v

    @field_validator("content_layers", "style_layers")
    @classmethod
    def _non_empty(cls, v):
        if v is not None and len(v) == 0:
            raise ValueError("layer list must not be empty")
        return v

    @model_validator(mode="after")
    def _lengths(self):
        for layers, weights, what in (
            (self.content_layers, self.content_layer_weights, "content"),
            (self.style_layers, self.style_layer_weights, "style"),
        ):
            if weights is not None and layers is not None and len(weights) != len(layers):
                raise ValueError(f"{len(weights)} {what}_layer_weights for {len(layers)} {what}_layers")
        return self

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1.0 if self.optimizer == "lbfgs" else 0.02

    def replace(self, **changes) -> "StyleConfig":
        return make_config(**{**self.model_dump(), **changes})


def make_config(**values) -> StyleConfig:
    """Build a `StyleConfig`, turning validation errors into one-line `ConfigError`s."""
    try:
        return StyleConfig(**values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """'field.sub: message' for the first error (one line), with a count of the others."""
    errs = exc.errors()
    first = errs[0]
    loc = ".".join(str(p) for p in first["loc"])
    where = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    extra = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{where}: {msg}{extra}" if where else f"{msg}{extra}"
