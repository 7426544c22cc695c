"""KL-term schedules and free bits: how strongly, and how far down, the KL term is pushed.

A KL schedule is a pure function ``weight(step) -> w`` of the number of updates applied so far
(the ``step`` every loss_fn receives), w in [0, 1]; the loss uses ``beta * w`` as the weight of
the KL term. Schedules are validated when they are made, so the jitted loss has no checks.

    constant   w = 1                                                   (the plain beta-VAE)
    linear     w = min(1, step / warmup_steps)                          (KL warm-up, Bowman
               et al. 2016; Sonderby et al. 2016)
    cyclical   tau = (step mod P) / P with P = ceil(total_steps / cycles),
               w = min(1, tau / ramp_fraction); w = 1 from total_steps on (Fu et al. 2019)

Free bits (Kingma et al. 2016, Sec. C.8) replace the KL term by sum_j max(lambda, KL_j), where
KL_j is the batch mean of latent dimension j's KL: a dimension whose KL is under the floor
lambda gets no gradient from the KL term, so the encoder is not pushed to collapse it further.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Schedule = Callable[[jax.Array], jax.Array]

KL_SCHEDULES = ("constant", "linear", "cyclical")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def constant_schedule() -> Schedule:
    """w(step) = 1."""
    return lambda step: jnp.ones((), jnp.float32)


def linear_schedule(warmup_steps: int) -> Schedule:
    """w(step) = min(1, step / warmup_steps): 0 at the first step, 1 from ``warmup_steps`` on."""
    warmup_steps = _positive_int("kl_warmup_steps", warmup_steps)
    return lambda step: jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)


def cyclical_schedule(total_steps: int, cycles: int, ramp_fraction: float = 0.5) -> Schedule:
    """Cyclical annealing (Fu et al. 2019, Eq. 6): ``cycles`` ramps from 0 to 1 over the run.

    With P = ceil(total_steps / cycles) and tau = (step mod P) / P, the weight is
    tau / ramp_fraction while tau <= ramp_fraction and 1 for the rest of the cycle. From
    ``total_steps`` on the weight stays 1, so the trained model is evaluated on the full ELBO.
    """
    total_steps = _positive_int("kl_total_steps", total_steps)
    cycles = _positive_int("kl_cycles", cycles)
    if isinstance(ramp_fraction, bool) or not isinstance(ramp_fraction, (int, float)):
        raise TypeError(f"kl_ramp_fraction must be a number, got {ramp_fraction!r}")
    if not 0.0 < ramp_fraction <= 1.0:
        raise ValueError(f"kl_ramp_fraction must be in (0, 1], got {ramp_fraction}")
    if cycles > total_steps:
        raise ValueError(f"kl_cycles ({cycles}) cannot exceed the number of steps ({total_steps})")
    period = math.ceil(total_steps / cycles)

    def weight(step):
        step = jnp.asarray(step, jnp.int32)
        tau = jnp.mod(step, period).astype(jnp.float32) / period
        return jnp.where(step >= total_steps, 1.0, jnp.minimum(1.0, tau / ramp_fraction))

    return weight


def make_kl_schedule(name: str, *, warmup_steps: int = 0, total_steps: int = 0, cycles: int = 4,
                     ramp_fraction: float = 0.5) -> Schedule:
    """The named schedule (one of ``KL_SCHEDULES``), validated.

    Args:
      name: ``"constant"``, ``"linear"`` or ``"cyclical"``.
      warmup_steps: linear: the steps to reach w = 1.
      total_steps: cyclical: the number of steps of the run.
      cycles: cyclical: the number of cycles M.
      ramp_fraction: cyclical: the fraction R of each cycle spent ramping up.

    Raises:
      ValueError / TypeError: an unknown name, or a parameter the schedule cannot use.
    """
    if name == "constant":
        return constant_schedule()
    if name == "linear":
        return linear_schedule(warmup_steps)
    if name == "cyclical":
        return cyclical_schedule(total_steps, cycles, ramp_fraction)
    raise ValueError(f"unknown KL schedule {name!r}; choose one of {list(KL_SCHEDULES)}")


def free_bits_kl(kl_BxZ: jax.Array, floor: float) -> tuple[jax.Array, jax.Array]:
    """The free-bits KL term sum_j max(floor, mean_b KL_bj) (Kingma et al. 2016).

    Args:
      kl_BxZ: per-example, per-dimension KL (nats).
      floor: lambda, the free nats of each latent dimension (>= 0).

    Returns:
      ``(term, term_Z)``: the scalar term and each dimension's max(floor, KL_j). Below the floor
      a dimension's term is the constant floor, so its gradient is zero.
    """
    term_Z = jnp.maximum(floor, jnp.mean(kl_BxZ, axis=0))
    return jnp.sum(term_Z), term_Z
