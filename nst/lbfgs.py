"""L-BFGS for a batch of independent problems stacked along dim 0 (one image per grid cell).

`torch.optim.LBFGS` treats its parameters as one vector: run on a batch of images it would
couple them (one curvature history, one step length from global dot products), so a cell's
result would depend on which cells it was batched with.  `BatchLBFGS` keeps one L-BFGS
state per sample (its own history, scaling and step length; every dot product per sample) and
follows `torch.optim.LBFGS(max_iter=1, line_search_fn=None, tolerance_grad=0,
tolerance_change=0)` step for step, rejected curvature pairs and a full history included: a batch
of one makes the same iterates, and a sample makes the same iterates whatever it is batched with
(up to float summation order).

With `bounds` (``(lo, hi)``, the engine's ``lbfgs_clamp``) the iterate stays in the box (projected
quasi-Newton): a coordinate at a bound whose gradient points out of the box is held (its gradient and
direction are zero for that step), the new point is clamped into the box, and the curvature pair is built
from the displacement actually made (and the full gradients), so the optimum found is one a saved image can
hold.  Without bounds nothing changes.

With `first_step` (the engine's ``lbfgs_first_step``) the first step moves each sample by that RMS per value
instead of torch's min(1, 1/|g|_1), and again while a sample has no kept pair; a pair is kept only if its
gradient change is not mostly noise (`MIN_PAIR_COSINE`).  torch's tiny first step gave bf16 gradients a
curvature pair that was rounding noise, and the step after it was 60x too long (docs/performance.md).
Without it, the iterates are torch's.
"""

from __future__ import annotations

from typing import Callable

import torch

#: With `first_step`: a curvature pair is kept only where y.s > MIN_PAIR_COSINE |y| |s|.  Measured at 512 px,
#: bf16 (Neckarfront x The Starry Night): the pairs of a stage's first, tiny step had cosines 0.003-0.004 (the
#: gradient change was bf16 noise) and made the next step 60x too long; later pairs 0.1-0.7.
MIN_PAIR_COSINE = 1e-2


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample dot products of ``[B, P]`` tensors: ``[B]``."""
    return torch.linalg.vecdot(a, b, dim=1)


class BatchLBFGS:
    """One L-BFGS iteration per `step` (unit step after the first, no line search) per sample of `x`.

    The history is a list of steps shared by the batch, each with a per-sample validity: a sample
    that rejects a curvature pair (``y.s <= 1e-10``) or has dropped it as its oldest (history full)
    sees it as a no-op (``rho = 0``), which is exactly its own L-BFGS's history.  Nothing in a step
    waits on the device (no ``.item()``), unless the shared list outgrows `history_size`.
    """

    def __init__(self, x: torch.Tensor, lr: float = 1.0, history_size: int = 100,
                 bounds: tuple[float, float] | None = None, first_step: float | None = None) -> None:
        if not x.is_leaf or not x.requires_grad:
            raise ValueError("BatchLBFGS optimises a leaf tensor that requires grad")
        self.x = x
        self.lr = float(lr)
        self.history_size = int(history_size)
        self.bounds = bounds
        self.first_step = first_step
        self._y: list[torch.Tensor] = []  # gradient differences, [B, P] each
        self._s: list[torch.Tensor] = []  # steps taken, [B, P] each
        self._rho: list[torch.Tensor] = []  # 1 / (y.s) where the sample keeps the pair, else 0; [B] each
        self._count: torch.Tensor | None = None  # pairs each sample keeps, [B]
        self._h_diag: torch.Tensor | None = None  # initial inverse-Hessian scale per sample
        self._d: torch.Tensor | None = None  # last direction
        self._t: torch.Tensor | None = None  # last step length per sample
        self._s_last: torch.Tensor | None = None  # with bounds: the last projected displacement, [B, P]
        self._prev_grad: torch.Tensor | None = None
        self.iterations = 0

    def zero_grad(self) -> None:
        self.x.grad = None

    def _flat_grad(self) -> torch.Tensor:
        b = self.x.shape[0]
        if self.x.grad is None:
            return torch.zeros(b, self.x[0].numel(), dtype=self.x.dtype, device=self.x.device)
        return self.x.grad.reshape(b, -1)

    def _remember(self, y: torch.Tensor, s: torch.Tensor, ys: torch.Tensor) -> None:
        """Add a curvature pair for the samples that accept it, each dropping its oldest if full."""
        accept = ys > 1e-10
        yy = _dot(y, y)
        if self.first_step is not None:  # and not a pair whose y is mostly gradient noise (bf16)
            accept = accept & (ys > MIN_PAIR_COSINE * (yy * _dot(s, s)).sqrt())
        if len(self._y) >= self.history_size:  # only then can a sample's own history be full
            evict = accept & (self._count >= self.history_size)
            for i in range(len(self._rho)):  # oldest first: each evicting sample drops its oldest kept pair
                hit = evict & (self._rho[i] != 0)
                self._rho[i] = torch.where(hit, torch.zeros_like(self._rho[i]), self._rho[i])
                evict = evict & ~hit
            self._count = self._count - (accept & (self._count >= self.history_size)).to(self._count.dtype)
        self._y.append(y)
        self._s.append(s)
        self._rho.append(torch.where(accept, 1.0 / ys, torch.zeros_like(ys)))
        self._count = self._count + accept.to(self._count.dtype)
        self._h_diag = torch.where(accept, ys / yy, self._h_diag)
        while len(self._y) > self.history_size and not bool((self._rho[0] != 0).any()):  # kept by no sample
            self._y.pop(0)
            self._s.pop(0)
            self._rho.pop(0)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Evaluate the loss and its gradient with `closure` (which must call backward), then move."""
        with torch.enable_grad():
            loss = closure()
        g_full = self._flat_grad()
        g, active = g_full, None
        if self.bounds is not None:  # coordinates held at a bound by their gradient are out of this step's problem
            lo, hi = self.bounds
            xf = self.x.detach().reshape(g.shape)
            active = ((xf <= lo) & (g > 0)) | ((xf >= hi) & (g < 0))
            g = g.masked_fill(active, 0.0)
        self.iterations += 1
        if self.iterations == 1:
            d = g.neg()
            self._h_diag = torch.ones(g.shape[0], dtype=g.dtype, device=g.device)
            self._count = torch.zeros(g.shape[0], dtype=torch.long, device=g.device)
        else:
            # the curvature pair is the objective's own: full gradients (not the masked ones, whose difference
            # is the gradient itself wherever the held set changed: such pairs made bf16 runs diverge)
            y = g_full - self._prev_grad
            s = self._d * self._t[:, None] if self._s_last is None else self._s_last
            self._remember(y, s, _dot(y, s))
            # two-loop recursion: d = -H g, per sample (a pair with rho = 0 changes nothing)
            q = g.neg()
            alphas: list[torch.Tensor] = [None] * len(self._y)  # type: ignore[list-item]
            for i in range(len(self._y) - 1, -1, -1):
                alphas[i] = _dot(self._s[i], q) * self._rho[i]
                q.sub_(self._y[i] * alphas[i][:, None])
            d = q.mul_(self._h_diag[:, None])
            for i in range(len(self._y)):
                beta = _dot(self._y[i], d) * self._rho[i]
                d.add_(self._s[i] * (alphas[i] - beta)[:, None])
        if self._prev_grad is None:
            self._prev_grad = g_full.clone()
        else:
            self._prev_grad.copy_(g_full)
        if self.first_step is not None:
            # a displacement of first_step RMS per value, and again (a gradient step) while a sample has no pair
            fresh = self._count == 0
            t_first = self.first_step * g.shape[1] ** 0.5 / _dot(g, g).sqrt().clamp_min(1e-30) * self.lr
            t = torch.where(fresh, t_first, torch.full_like(t_first, self.lr))
            if self.iterations > 1:
                d = torch.where(fresh[:, None], g.neg(), d)
        elif self.iterations == 1:  # torch's first step: min(1, 1/|g|_1) * lr
            t = torch.clamp(1.0 / g.abs().sum(dim=1), max=1.0) * self.lr
        else:
            t = torch.full((g.shape[0],), self.lr, dtype=g.dtype, device=g.device)
        if active is not None:
            d = d.masked_fill(active, 0.0)
        # torch stops (does not move) where d is not a descent direction
        move = (_dot(g, d) <= 0).to(g.dtype)
        step = (d * (t * move)[:, None]).view_as(self.x)
        if self.bounds is None:
            self.x.add_(step)
        else:  # projected: clamp the new point into the box, remember the displacement really made
            new = (self.x + step).clamp_(*self.bounds)
            self._s_last = (new - self.x).reshape(g.shape)
            self.x.copy_(new)
        self._d, self._t = d, t
        return loss
