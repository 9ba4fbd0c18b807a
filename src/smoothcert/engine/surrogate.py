"""The differentiable radius surrogate that per-input σ / θ searches climb (DDRS, ANCER, data-dependent training),
and DDRS's σ ascent on it (:func:`ddrs_sigma`), which the DDRS method and data-dependent training both run.

ψ = E_ε softmax f(x + scale ⊙ ε) is estimated from M reparameterized draws per step, so gradients reach σ / θ
through the noise; all inputs of a batch and all their draws go through the base classifier in one forward pass.
Noise comes from seeded generators: one shared generator, or one per input (a list), in which case input i's draws
depend only on its own generator and the result for input i does not depend on which inputs share its batch.

Clamping (ℓ2 only): ψ₁, ψ₂ are clamped into [PSI_CLAMP, 1 - PSI_CLAMP] before Φ⁻¹, so the surrogate stays finite.
With PSI_CLAMP = 1e-3, as in both papers' code, Φ⁻¹(0.999) ≈ 3.09, already above the largest gap certification can
certify with n ≤ 6900 draws at α = 0.001. ℓ1 needs no clamp: its gap ψ₁ - ψ₂ is bounded.

Precision: the base classifier may run in bfloat16 (autocast) while searching; ψ, the gap and the σ / θ updates
stay in float32. A search only looks for good σ / θ: its arithmetic can change how good the result is, never the
soundness of its certificate, which certification computes afresh in float32. Nothing here is a bound.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from smoothcert.engine import noise as noise_mod
from smoothcert.engine.stats import NOISE_OF_NORM, NORMS
from smoothcert.errors import require

PSI_CLAMP = 1e-3
Generators = torch.Generator | Sequence[torch.Generator] | None
PRECISIONS = ("auto", "float32", "bfloat16")
GRADIENT = "central"  # DDRS ascent in float32: "central" differences (two forward passes, same draws) or "autograd"
FD_STEP = 1e-2  # relative step h / σ of the central difference


def resolve_precision(name: str, device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (None: float32). auto: bfloat16 on a CUDA device that supports it
    and on a CPU whose oneDNN runs bfloat16 natively (AVX-512 BF16 / AMX), else float32."""
    require(name in PRECISIONS, f"unknown precision {name!r}; allowed: {PRECISIONS}")
    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:  # torch's own CPU probes (private, so guarded): oneDNN built with bf16, and the CPU runs it natively
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and (
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        )
    except (AttributeError, RuntimeError):
        native = False
    return torch.bfloat16 if native else None


def forward(model: nn.Module, z: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    """Logits of ``z`` in float32; the model runs under autocast(``amp``) for float32 inputs."""
    if amp is None or z.dtype != torch.float32:
        return model(z)
    with torch.autocast(z.device.type, dtype=amp):
        return model(z).float()


def noise_kind(norm: str) -> str:
    require(norm in NORMS, f"unknown norm {norm!r}; allowed: {NORMS}")
    return NOISE_OF_NORM[norm]


def _scale_view(scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """σ (B,) or θ (B, d) / (B, *shape) as a (B, *shape)-broadcastable tensor of x's dtype (differentiable)."""
    b, shape = x.shape[0], tuple(x.shape[1:])
    s = scale.to(x.dtype)
    if s.ndim == 1 and s.shape[0] == b:
        return s.reshape(b, *([1] * len(shape)))
    if s.ndim >= 2 and s.shape[0] == b and s[0].numel() == int(np.prod(shape)):
        return s.reshape(b, *shape)
    raise ValueError(f"noise scale of shape {tuple(s.shape)} does not fit inputs of shape {tuple(x.shape)}")


def noisy_batch(x: torch.Tensor, scale: torch.Tensor, samples: int, kind: str, generator: Generators) -> torch.Tensor:
    """Reparameterized draws x + scale ⊙ ε, shape (B·samples, *shape), rows grouped by input.

    With a single generator, ε is drawn exactly as :func:`noise.noisy_copies` draws it;
    with a list, ε for input i comes from ``generator[i]`` alone (batch-independent).
    Keeps x's dtype (float64 for gradient checks); gradients flow into ``scale``.
    """
    return perturbed(x, scale, standard_noise(x, samples, kind, generator))


def perturbed(x: torch.Tensor, scale: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x + scale ⊙ ε for given ε (B, samples, *shape), as (B·samples, *shape) rows grouped by input."""
    b, shape = x.shape[0], tuple(x.shape[1:])
    return (x.unsqueeze(1) + _scale_view(scale, x).unsqueeze(1) * eps).reshape(b * eps.shape[1], *shape)


def standard_noise(x: torch.Tensor, samples: int, kind: str, generator: Generators) -> torch.Tensor:
    """ε (B, samples, *shape) of x's dtype, drawn as :func:`noisy_batch` draws it."""
    b, shape = x.shape[0], tuple(x.shape[1:])
    eps = torch.empty((b, samples, *shape), dtype=x.dtype, device=x.device)
    if isinstance(generator, (list, tuple)):
        require(len(generator) == b, f"got {len(generator)} generators for {b} inputs")
        noise_mod.fill_rows(eps, kind, generator)  # one vectorized draw for all inputs (values as one by one)
    else:
        noise_mod.fill_standard(eps, kind, generator)
    return eps


def top2_probabilities(
    model: nn.Module,
    x: torch.Tensor,
    scale: torch.Tensor,
    norm: str,
    samples: int,
    generator: Generators,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """(B, 2): the two largest entries of ψ = mean over ``samples`` draws of softmax f(x + scale ⊙ ε).

    Gaussian ε for ℓ2, U[-1, 1] for ℓ1. One forward pass for all B·samples draws (under
    autocast(``amp``) when given; the softmax and mean are float32).
    """
    return top2_of_noise(model, x, scale, standard_noise(x, samples, noise_kind(norm), generator), amp)


def top2_of_noise(
    model: nn.Module, x: torch.Tensor, scale: torch.Tensor, eps: torch.Tensor, amp: torch.dtype | None = None
) -> torch.Tensor:
    """:func:`top2_probabilities` on given standard noise ε (B, samples, *shape)."""
    logits = forward(model, perturbed(x, scale, eps), amp)
    psi = torch.softmax(logits, dim=1).reshape(x.shape[0], eps.shape[1], -1).mean(1)
    return psi.topk(2, dim=1).values


def proxy_gap(top2: torch.Tensor, norm: str) -> torch.Tensor:
    """The differentiable gap: ½(Φ⁻¹(ψ₁) - Φ⁻¹(ψ₂)) with ψ clamped (ℓ2), or ψ₁ - ψ₂ (ℓ1).

    Equals stats.gap(ψ₁) when ψ₂ = 1 - ψ₁, so σ·gap is the certified radius at p̲A = ψ₁.
    """
    if noise_kind(norm) == "gaussian":
        p = top2.clamp(PSI_CLAMP, 1.0 - PSI_CLAMP)
        return 0.5 * (torch.special.ndtri(p[:, 0]) - torch.special.ndtri(p[:, 1]))
    return top2[:, 0] - top2[:, 1]


def bounded(scale: torch.Tensor, low: float | None, high: float | None) -> torch.Tensor:
    """σ / θ clamped into [low, high] (either bound None: none on that side); the searches' only projection."""
    return scale.clamp(min=low, max=high) if low is not None or high is not None else scale


def log_geometric_mean(theta: torch.Tensor) -> torch.Tensor:
    """log (∏ θᵢ)^{1/d} per row of θ (B, ...), computed in log space (no under/overflow)."""
    return theta.reshape(theta.shape[0], -1).log().mean(1)


def surrogate(
    model: nn.Module,
    x: torch.Tensor,
    scale: torch.Tensor | float,
    norm: str,
    samples: int,
    generator: Generators,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """(B,) differentiable radius surrogate: σ·gap for σ (B,) or a float, (∏θᵢ)^{1/d}·gap for θ (B, d).

    ℓ2: σ/2·(Φ⁻¹(ψ₁) - Φ⁻¹(ψ₂)); ℓ1: σ·(ψ₁ - ψ₂) (see :func:`proxy_gap`). For θ this
    is ANCER's proxy radius, the radius of the ℓp ball of equal volume.
    """
    if not torch.is_tensor(scale) or scale.ndim == 0:
        scale = torch.full((x.shape[0],), float(scale), dtype=x.dtype, device=x.device)
    gap = proxy_gap(top2_probabilities(model, x, scale, norm, samples, generator, amp), norm)
    if scale.ndim == 1:
        return scale.to(gap.dtype) * gap
    return log_geometric_mean(scale).exp().to(gap.dtype) * gap


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off ``requires_grad`` on the model's parameters; restore each flag on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@dataclass(frozen=True)
class EarlyStop:
    """The σ / θ searches' stopping rule, per input: the objective's trace is smoothed by an exponential moving
    average m ← β·m + (1 − β)·value (m starts at the first value; β = ``smoothing``), a step improves when
    m > best + ``tolerance``·|best|, and the input stops after ``patience`` steps in a row without improvement.

    Each input's decision reads only its own trace, so with per-input generators it does not depend on which
    inputs share its batch. A search only proposes σ / θ: when it stops never touches a certificate.
    """

    patience: int
    tolerance: float
    smoothing: float

    @classmethod
    def of(cls, settings: Mapping) -> EarlyStop | None:
        """The rule of a search section of params.yaml (``early_stop``, ``patience``, ``tolerance``,
        ``smoothing``); None when ``early_stop`` is false."""
        if not settings["early_stop"]:
            return None
        return cls(int(settings["patience"]), float(settings["tolerance"]), float(settings["smoothing"]))


class Plateau:
    """Tracks :class:`EarlyStop` for ``n`` inputs; :meth:`update` takes the objective of some of them."""

    def __init__(self, rule: EarlyStop, n: int):
        self.rule = rule
        self.mean = torch.zeros(n, dtype=torch.float64)
        self.best = torch.full((n,), -np.inf, dtype=torch.float64)
        self.since = torch.zeros(n, dtype=torch.int64)
        self.seen = torch.zeros(n, dtype=torch.bool)

    def update(self, rows: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Feed ``value`` (len(rows),), the objective of inputs ``rows`` at this step; True where it stopped."""
        rows, value = rows.cpu(), value.detach().to("cpu", torch.float64)
        beta = self.rule.smoothing
        m = torch.where(self.seen[rows], beta * self.mean[rows] + (1.0 - beta) * value, value)
        best = self.best[rows]
        better = m > best + self.rule.tolerance * best.abs().nan_to_num(posinf=0.0, neginf=0.0)
        self.mean[rows], self.seen[rows] = m, True
        self.best[rows] = torch.where(better, m, best)
        self.since[rows] = torch.where(better, 0, self.since[rows] + 1)
        return self.since[rows] >= self.rule.patience


DRAWS = ("iid", "antithetic", "common", "common_antithetic")


class SearchNoise:
    """The standard noise ε a search's steps use, per input, by ``mode`` (a variance reduction; a search only
    proposes σ / θ, so how it draws never touches a certificate):

    - ``iid``: fresh draws every step (as both papers);
    - ``antithetic``: fresh every step, in pairs ε, −ε (both noises are symmetric; an odd ``samples`` keeps one
      unpaired draw);
    - ``common``: one set drawn before the first step and reused at every step (common random numbers: the
      objective is then a smooth deterministic function of σ / θ, a sample-average approximation);
    - ``common_antithetic``: one antithetic set, reused.

    Input i's draws come from ``generator[i]`` alone (with a list), so they do not depend on its batch.
    """

    def __init__(self, x: torch.Tensor, samples: int, kind: str, generator: Generators, mode: str = "iid"):
        require(mode in DRAWS, f"unknown search draws {mode!r}; allowed: {DRAWS}")
        self.samples, self.kind, self.antithetic = samples, kind, mode.endswith("antithetic")
        self.fixed = self._draw(x, generator) if mode.startswith("common") else None

    def _draw(self, x: torch.Tensor, generator: Generators) -> torch.Tensor:
        if not self.antithetic:
            return standard_noise(x, self.samples, self.kind, generator)
        half = standard_noise(x, (self.samples + 1) // 2, self.kind, generator)
        return torch.cat([half, -half], 1)[:, : self.samples]

    def draw(self, active: Active) -> torch.Tensor:
        """ε (len(active), samples, *shape) for this step of the inputs still searching."""
        if self.fixed is not None:
            return self.fixed if len(active) == self.fixed.shape[0] else self.fixed[active.rows]
        return self._draw(active.x, active.generator)


class Active:
    """The inputs of a batch still searching: their rows of ``x`` and their generators, shrunk by :meth:`drop`."""

    def __init__(self, x: torch.Tensor, generator: Generators):
        self.all_x, self.all_gen = x, generator
        self.rows = torch.arange(x.shape[0], device=x.device)
        self.x, self.generator = x, generator

    def __len__(self) -> int:
        return len(self.rows)

    def drop(self, stopped: torch.Tensor) -> None:
        """Remove the active inputs where ``stopped`` (len(self),) is True."""
        if not bool(stopped.any()):
            return
        self.rows = self.rows[~stopped.to(self.rows.device)]
        self.x = self.all_x[self.rows]
        if isinstance(self.all_gen, (list, tuple)):
            self.generator = [self.all_gen[int(i)] for i in self.rows]


def record_cost(taken: torch.Tensor, per_step: int, steps: torch.Tensor | None, evals: torch.Tensor | None) -> None:
    """A search's cost per input, into the caller's tensors (either may be None): ``steps`` receives the steps
    each input ``taken``, ``evals`` its base-classifier evaluations (steps × ``per_step`` forwards)."""
    if steps is not None:
        steps.copy_(taken)
    if evals is not None:
        evals.copy_(taken * per_step)


def ddrs_sigma(
    model: nn.Module,
    x: torch.Tensor,
    sigma0: torch.Tensor,
    norm: str,
    *,
    iterations: int,
    lr: float,
    samples: int,
    sigma_min: float,
    generator: Generators,
    sigma_max: float | None = None,
    amp: torch.dtype | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    early_stop: EarlyStop | None = None,
    steps: torch.Tensor | None = None,
    evals: torch.Tensor | None = None,
    draws: str = "iid",
) -> torch.Tensor:
    """DDRS: per-input σ (B,) by plain gradient ascent σ ← clamp(σ + lr·∇σ R(σ), sigma_min, sigma_max) on
    R = :func:`surrogate` (``sigma_max`` None: no upper bound, as the paper).

    At most ``iterations`` steps of ``samples`` draws per input, one forward for the inputs still searching per
    step (the model under autocast(``amp``) when given, e.g. ``torch.bfloat16``). With ``early_stop``, an input
    whose R (estimated at each step's σ) plateaus leaves the batch and keeps its σ; without, every input takes
    every step. ``steps`` (B,) int64, when given, receives the steps each input took; ``evals`` (B,) int64 the
    base-classifier evaluations (rows forwarded) each input spent: 2·samples a step with the float32 central
    difference, samples a step with autograd. ``draws``: how each step's noise is drawn (:class:`SearchNoise`).
    Guarantees: the result lies in [sigma_min, sigma_max], detached, of x's dtype; with a list of per-input
    generators, row i depends only on x[i], sigma0[i] and generator[i].
    ``callback(step, sigma)`` (optional) sees σ after each step.
    """
    x = x.detach()
    sigma = bounded(torch.as_tensor(sigma0, device=x.device).detach().to(x.dtype), sigma_min, sigma_max).clone()
    require(sigma.shape == (x.shape[0],), f"sigma0 has shape {tuple(sigma.shape)}, expected ({x.shape[0]},)")
    taken = torch.zeros(x.shape[0], dtype=torch.int64)
    plateau = Plateau(early_stop, x.shape[0]) if early_stop is not None else None
    active = Active(x, generator)
    noise = SearchNoise(x, samples, noise_kind(norm), generator, draws)
    central = GRADIENT == "central" and amp is None and x.dtype == torch.float32
    per_step = (2 if central else 1) * samples  # forwards per input and step (see _central_gradient)
    with frozen(model), torch.no_grad() if central else torch.enable_grad():
        for step in range(iterations):
            if not len(active):
                break
            rows, s = active.rows, sigma[active.rows]
            eps = noise.draw(active)
            if central:
                grad, value = _central_gradient(model, active.x, s, norm, eps)
            else:
                s.requires_grad_(True)
                gap = proxy_gap(top2_of_noise(model, active.x, s, eps, amp), norm)
                radius = s.to(gap.dtype) * gap
                (grad,) = torch.autograd.grad(radius.sum(), s)
                s, value = s.detach(), radius.detach()
            sigma[rows] = bounded(s + lr * grad, sigma_min, sigma_max)
            taken[rows.cpu()] += 1
            if plateau is not None:
                active.drop(plateau.update(rows, value))
            if callback is not None:
                callback(step, sigma.clone())
    record_cost(taken, per_step, steps, evals)
    return sigma


def _central_gradient(
    model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, norm: str, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """dR/dσ (B,) of :func:`surrogate` by a central difference (R(σ + h) − R(σ − h)) / 2h, h = FD_STEP·σ, on the
    same draws ε (B, samples, *shape) for both (common random numbers across ±h, the step's one draw as the
    autograd step takes it); one forward pass of 2·B·samples rows. Also returns (R(σ + h) + R(σ − h)) / 2, the
    estimate of R(σ) the early stop reads."""
    b, shape, samples = x.shape[0], tuple(x.shape[1:]), eps.shape[1]
    h = sigma * FD_STEP
    both = torch.cat([sigma + h, sigma - h])  # (2B,)
    view = (2, b, 1, *([1] * len(shape)))
    z = (x.unsqueeze(1).unsqueeze(0) + both.reshape(view) * eps.unsqueeze(0)).reshape(2 * b * samples, *shape)
    psi = torch.softmax(forward(model, z, None), dim=1).reshape(2 * b, samples, -1).mean(1)
    r = both * proxy_gap(psi.topk(2, dim=1).values, norm)
    return (r[:b] - r[b:]) / (2 * h), 0.5 * (r[:b] + r[b:])
