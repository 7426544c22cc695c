"""Training objectives, one contract: ``loss_fn(params, batch, key, step) -> (loss, metrics)``.

``batch`` is a dict with ``"x"`` (examples) and ``"y"`` (int labels, -1 where a dataset has
none); ``step`` is the int32 number of updates applied so far (for KL schedules); ``loss`` is
the scalar to minimize and ``metrics`` a dict of batch means in nats per example, with at least
``loss``, ``recon`` and ``kl`` (recon + kl is the one-sample negative ELBO). Every objective is
made by a factory named ``make_*_loss``:

    make_elbo_loss      mean_b recon_b + beta * w(step) * KL-term, for every model of
                        ``jaxvae.models.interface`` (MLP with any prior and likelihood, conv, cvae,
                        planar flow, ladder); KL-term = mean_b KL_b, or with free bits
                        sum_j max(lambda, mean_b KL_bj) (models with a per-dimension KL)
    make_iwae_loss      -mean_b [logsumexp_k log w_kb - log K]   (Burda et al. 2016)
    make_vq_loss        the VQ-VAE objective (van den Oord et al. 2017)
    make_code_prior_loss  -log p(c) of an autoregressive prior over a VQ-VAE's code grids
    make_m2_loss        the semi-supervised M2 objective (Kingma et al. 2014)
    make_sequence_loss  the sequence VAE's -ELBO with KL warm-up and word dropout
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import likelihoods, validation
from jaxvae.models import interface
from jaxvae.objectives import bounds as objectives
from jaxvae.objectives import schedules
from jaxvae.models import code_prior
from jaxvae.models import m2 as semisupervised
from jaxvae.models import sequence
from jaxvae.models import vq as vqvae


# The bounds a latent-variable model of ``jaxvae.models.interface`` can train on.
OBJECTIVES = ("elbo", "iwae")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """The objective section of a training config: the KL weight and its schedule, free bits,
    importance samples and the VQ-VAE's commitment weight."""

    name: str = dataclasses.field(default="elbo", metadata={"flat_name": "objective"})  # the
    #   bound a latent-variable model trains on: elbo (the negative ELBO, with beta, the KL
    #   schedule and free bits) or iwae (the K-sample importance-weighted bound, K =
    #   num_samples; any model with log-weights: mlp with any prior, conv, cvae, flow, ladder)
    beta: float = 1.0  # weight of the KL term (1 = the ELBO; beta-VAE otherwise)
    kl_schedule: str = "constant"  # KL weight beta * w(step): constant, linear warm-up or
    #   cyclical annealing
    kl_warmup_steps: int = 0  # linear: steps from w = 0 to w = 1 (>= 1 when linear)
    kl_cycles: int = 4  # cyclical: number of cycles M over kl_total_steps (Fu et al. 2019)
    kl_ramp_fraction: float = 0.5  # cyclical: fraction R of each cycle spent ramping 0 -> 1
    kl_total_steps: int = 0  # cyclical: steps the cycles span; 0 = the whole run
    free_bits: float = 0.0  # free bits lambda: KL term sum_j max(lambda, KL_j), in nats per
    #   latent dimension (0 = off)
    num_samples: int = 5  # K importance samples of the iwae objective (and --model iwae)
    commitment_cost: float = 0.25  # vqvae: beta_c, the weight of the commitment loss

    def validate(self) -> None:
        """Raises ValueError / TypeError naming the first field that cannot work."""
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r}; choose one of {list(OBJECTIVES)}")
        for name in ("beta", "commitment_cost"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        name = self.kl_schedule
        if name not in schedules.KL_SCHEDULES:
            raise ValueError(f"unknown KL schedule {name!r}; choose one of "
                             f"{list(schedules.KL_SCHEDULES)}")
        for field in ("kl_warmup_steps", "kl_cycles", "kl_total_steps", "num_samples"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{field} must be an int, got {value!r}")
        if name == "linear" and self.kl_warmup_steps < 1:
            raise ValueError("the linear KL schedule needs --kl-warmup-steps >= 1 (the steps to "
                             f"reach the full KL weight), got {self.kl_warmup_steps}")
        if name == "cyclical":
            if self.kl_total_steps < 0:
                raise ValueError("kl_total_steps must be >= 0 (0 = the run's number of steps)")
            schedules.cyclical_schedule(max(self.kl_total_steps, self.kl_cycles),
                                        self.kl_cycles, self.kl_ramp_fraction)
        free_bits = self.free_bits
        if isinstance(free_bits, bool) or not isinstance(free_bits, (int, float)):
            raise TypeError(f"free_bits must be a number, got {free_bits!r}")
        if not math.isfinite(free_bits) or free_bits < 0:
            raise ValueError(f"free_bits must be a finite number >= 0 (nats per latent "
                             f"dimension), got {free_bits}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples (K) must be >= 1, got {self.num_samples}")

    def kl_schedule_fn(self) -> schedules.Schedule:
        """w(step) of ``kl_schedule`` (a cyclical schedule needs ``kl_total_steps`` > 0)."""
        if self.kl_schedule == "cyclical" and self.kl_total_steps == 0:
            raise ValueError("the cyclical KL schedule needs kl_total_steps: trainer.fit fills it "
                             "in from epochs and the data size; set it when you build a model "
                             "yourself")
        return schedules.make_kl_schedule(self.kl_schedule, warmup_steps=self.kl_warmup_steps,
                                          total_steps=self.kl_total_steps,
                                          cycles=self.kl_cycles,
                                          ramp_fraction=self.kl_ramp_fraction)


class LossFn(Protocol):
    """The training objective's contract (in the spirit of penzai's ``LossFunction``)."""

    def __call__(self, params: Any, batch: dict, key: jax.Array, step: jax.Array
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        ...


def _check_beta(beta) -> float:
    if isinstance(beta, (bool, np.bool_)) or not isinstance(beta, (int, float, np.floating)):
        raise TypeError(f"beta must be a number, got {beta!r}")
    if not 0 <= beta < float("inf"):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    return float(beta)


def check_free_bits(free_bits: float, model: nn.Module) -> float:
    """free_bits as a float >= 0; > 0 only for a model with an analytic KL per latent dimension."""
    if isinstance(free_bits, bool) or not isinstance(free_bits, (int, float)):
        raise TypeError(f"free_bits must be a number, got {free_bits!r}")
    if not math.isfinite(free_bits) or free_bits < 0:
        raise ValueError(f"free_bits must be a finite number >= 0 (nats per latent dimension), "
                         f"got {free_bits}")
    if free_bits > 0 and not getattr(model, "analytic_kl_per_dim", False):
        what = (f"the {model.prior_name} prior" if hasattr(model, "prior_name")
                else f"the {type(model).__name__}")
        raise ValueError(f"free bits need a KL per latent dimension, which {what} does not "
                         "have; use an MLP or conv VAE with --prior standard or diagonal")
    return float(free_bits)


def make_elbo_loss(model: nn.Module, beta: float = 1.0,
                   kl_schedule: schedules.Schedule | None = None, free_bits: float = 0.0
                   ) -> LossFn:
    """The beta-weighted, scheduled, free-bits negative ELBO of any interface model.

        loss = mean_b recon_b + beta * w(step) * KL-term

    with recon_b, KL_b = ``interface.elbo_terms`` (one reparameterized z per example with
    eps = normal(key, (B, Z)); the KL analytic where the model has it, else the Monte Carlo
    log q(z | x) - log p(z)), KL-term = mean_b KL_b, or with ``free_bits`` = lambda > 0 the
    term sum_j max(lambda, mean_b KL_bj) of ``schedules.free_bits_kl``. With beta = 1, the
    constant schedule, no free bits, the standard prior it equals ``jaxvae.loss`` exactly.

    Args:
      model: a ``jaxvae.models.interface.LatentVariableModel`` (not the VQ-VAE: ``make_vq_loss``).
      beta: the KL weight (the beta-VAE's beta, Higgins et al. 2017), >= 0.
      kl_schedule: ``w(step)`` from ``jaxvae.objectives.schedules`` (default constant 1).
      free_bits: lambda, nats per latent dimension (0 = off).

    Returns:
      ``loss_fn``; metrics ``loss``, ``recon``, ``kl`` (the true KL or its estimate, never
      floored or weighted), ``kl_weight`` (beta * w(step)), ``kl_free_bits`` (with free bits),
      ``bits_per_dim`` (logistic likelihood), and the model's own terms (``log_det`` of the
      flows, ``kl_1`` .. ``kl_L`` of the ladder).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxvae
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params, x = jaxvae.init(model, jax.random.key(0)), jnp.zeros((3, 4))
      >>> loss_fn = jaxvae.make_elbo_loss(model, beta=1.0)
      >>> loss, metrics = jax.jit(loss_fn)(params, {"x": x}, jax.random.key(1), jnp.int32(0))
      >>> sorted(metrics)
      ['kl', 'kl_weight', 'loss', 'recon']
      >>> bool(jnp.isclose(loss, metrics["recon"] + metrics["kl"]))  # beta = 1: the -ELBO
      True
    """
    if isinstance(model, vqvae.VQVAE):
        raise ValueError("the VQ-VAE is trained with make_vq_loss, not make_elbo_loss")
    interface.check_defined(model, "elbo_terms")
    beta = _check_beta(beta)
    free_bits = check_free_bits(free_bits, model)
    kl_schedule = kl_schedule or schedules.constant_schedule()
    num_dims = interface.example_size(model)

    def loss_fn(params, batch, key, step):
        terms = interface.elbo_terms(model, params, batch, key)
        weight = beta * kl_schedule(step)
        if free_bits > 0:
            kl_term, _ = schedules.free_bits_kl(terms.kl_BxZ, free_bits)
            recon = jnp.mean(terms.recon_B)
            loss = recon + weight * kl_term
            metrics = {"loss": loss, "recon": recon, "kl": jnp.mean(terms.kl_B),
                       "kl_free_bits": kl_term}
        else:
            loss, metrics = objectives.batch_metrics(terms.recon_B, terms.kl_B, weight)
        metrics["kl_weight"] = weight
        metrics.update({name: jnp.mean(value) for name, value in terms.extras.items()})
        if model.likelihood == "logistic":
            metrics["bits_per_dim"] = likelihoods.bits_per_dim(
                metrics["recon"] + metrics["kl"], num_dims)
        return loss, metrics

    return loss_fn


def make_iwae_loss(model: nn.Module, num_samples: int) -> LossFn:
    """The negative K-sample IWAE bound (Burda et al. 2016) of any model with log-weights.

        loss = -mean_b [logsumexp_k log w_kb - log K],
        log w_kb = log p(x_b | z_kb) + log p(z_kb) - log q(z_kb | x_b),  z_kb ~ q(z | x_b)

    with ``interface.log_weights`` (for the Gaussian posterior eps_KxBxZ = normal(key, (K, B,
    Z))). The gradient weights each sample by its normalized importance weight. At K = 1 the
    loss is the one-sample Monte Carlo -ELBO. Metrics ``recon`` and ``kl`` are the averages
    over the K samples of -log p(x|z) and of log q(z|x) - log p(z), so recon + kl is the
    average one-sample -ELBO, an upper bound of ``loss``.

    Args:
      model: a model of ``jaxvae.models.interface`` that defines ``log_weights``.
      num_samples: K >= 1, importance samples per example.

    Returns:
      ``loss_fn``; metrics ``loss``, ``recon`` and ``kl``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxvae
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params, x = jaxvae.init(model, jax.random.key(0)), jnp.zeros((3, 4))
      >>> loss_fn = jaxvae.make_iwae_loss(model, num_samples=5)
      >>> loss, metrics = jax.jit(loss_fn)(params, {"x": x}, jax.random.key(1), jnp.int32(0))
      >>> bool(loss <= metrics["recon"] + metrics["kl"])  # K = 5 bound >= mean one-sample ELBO
      True
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples (K) must be an int >= 1, got {num_samples!r}")
    interface.check_defined(model, "log_weights")

    def loss_fn(params, batch, key, step):
        del step
        terms = interface.log_weight_terms(model, params, batch, key, num_samples)
        log_w_KxB = terms.log_weights()
        loss = -jnp.mean(objectives.iwae_bound(log_w_KxB))
        return loss, {"loss": loss, "recon": -jnp.mean(terms.log_px),
                      "kl": jnp.mean(terms.log_qz - terms.log_pz)}

    return loss_fn


def make_vq_loss(model: vqvae.VQVAE, commitment_cost: float = 0.25, decay: float = 0.99
                 ) -> LossFn:
    """The VQ-VAE objective of ``vqvae.vqvae_loss`` with the model's likelihood (step unused)."""
    if not isinstance(model, vqvae.VQVAE):
        raise TypeError(f"make_vq_loss trains a VQVAE, got {type(model).__name__}")

    def loss_fn(params, batch, key, step):
        del key, step
        return vqvae.vqvae_loss(model, params, batch["x"], model.likelihood, commitment_cost,
                                decay)

    return loss_fn


def make_code_prior_loss(prior: code_prior.CodePrior, train: bool = True) -> LossFn:
    """-log p(c), nats per grid, of a ``code_prior.CodePrior`` on batches ``{"x": codes_BxHxW}``.

    The examples are the int code grids of a VQ-VAE (``code_prior.encode_codes``). With
    ``train`` the prior's dropout is on, drawn with ``key``; without it the loss is the
    deterministic NLL (for evaluation). Metrics: ``loss`` = ``nll`` (mean nats per grid) and
    ``bits_per_code`` = nll / (L ln 2); ``step`` is unused.
    """
    if not isinstance(prior, code_prior.CodePrior):
        raise TypeError(f"make_code_prior_loss trains a CodePrior, got {type(prior).__name__}")

    def loss_fn(params, batch, key, step):
        del step
        nll_B = code_prior.code_nll(prior, params, batch["x"],
                                    dropout_key=key if train else None)
        loss = jnp.mean(nll_B)
        return loss, {"loss": loss, "nll": loss,
                      "bits_per_code": code_prior.bits_per_code(loss, prior.num_positions)}

    return loss_fn


def make_m2_loss(model: semisupervised.M2, x_labelled_NxD=None, y_labelled_N=None,
                 alpha: float = 1.0, labelled_batch_size: int = 100,
                 labelled_weight: float = 1.0,
                 draw_inputs: Callable[[jax.Array, jax.Array], jax.Array] | None = None
                 ) -> LossFn:
    """The semi-supervised M2 objective (Kingma et al. 2014, Eq. 9) on batches ``{"x", "y"}``.

        loss = lambda * mean_l [-L(x_l, y_l)] + mean_b [-ELBO_b]
               + alpha * mean_{labelled} [-log q(y | x)]

    ``-ELBO_b`` is the model's ``elbo_terms`` (``jaxvae.models.m2``): -L(x, y) where the
    batch's label is given, -U(x) where it is -1 (or the batch has no ``"y"``). The first term
    is over ``labelled_batch_size`` examples drawn each step (with replacement, from the key)
    from the labelled set ``x_labelled_NxD, y_labelled_N`` held on the device, so that the
    training loop can run its epochs over the unlabelled examples alone; without a labelled set
    (None) it is absent and the labels come from the batches. The classification term averages
    over every labelled example of the step (the drawn ones and the batch's). Eq. 9 sums the
    bounds over the data set and weighs the mean classification loss by alpha = 0.1 N; divided
    by the number of unlabelled examples N_u that is lambda = N_l / N_u and alpha = 0.1 N / N_u.

    With ``draw_inputs(key, raw_BxR) -> x_BxD``, the stored examples (the batch's and the
    labelled set's) are not what M2 reads but the parameters of a distribution over it, and
    every step draws M2's inputs afresh: the M1+M2 model, whose M2 reads z1 ~ q(z1 | x) of a
    trained M1 (``jaxvae.models.m2.draw_features``) instead of the same features in every epoch.

    Args:
      model: an ``M2``.
      x_labelled_NxD, y_labelled_N: the labelled set (labels in [0, C)), or both None.
      alpha: the weight of the classification term, >= 0.
      labelled_batch_size: labelled examples drawn per step.
      labelled_weight: lambda, the weight of the drawn labelled examples' mean bound, >= 0.
      draw_inputs: None (the stored examples are M2's inputs), or the function above.

    Returns:
      ``loss_fn``; metrics ``loss``, ``recon`` and ``kl`` (means over the batch: recon + kl is
      its mean -ELBO), ``unlabelled`` (that mean -ELBO), and where the step has labels
      ``labelled`` (mean -L of the drawn examples; 0 without a labelled set),
      ``classification`` (mean -log q(y | x)) and ``labelled_accuracy``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxvae
      >>> from jaxvae.models import m2
      >>> model = m2.m2(data_dim=4, num_classes=3, latent_dim=2, hidden=(8,))
      >>> params = jaxvae.init(model, jax.random.key(0))
      >>> loss_fn = jaxvae.make_m2_loss(model, jnp.zeros((5, 4)), jnp.arange(5) % 3, alpha=0.5)
      >>> batch = {"x": jnp.zeros((2, 4)), "y": jnp.array([-1, -1])}  # two unlabelled examples
      >>> loss, metrics = jax.jit(loss_fn)(params, batch, jax.random.key(1), jnp.int32(0))
      >>> bool(jnp.isclose(loss, metrics["labelled"] + metrics["unlabelled"]
      ...                  + 0.5 * metrics["classification"]))
      True
    """
    if not isinstance(model, semisupervised.M2):
        raise TypeError(f"make_m2_loss trains an M2, got {type(model).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < math.inf:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if (isinstance(labelled_weight, bool) or not isinstance(labelled_weight, (int, float))
            or not 0 <= labelled_weight < math.inf):
        raise ValueError(f"labelled_weight must be a finite number >= 0, got {labelled_weight!r}")
    labelled_batch_size = validation.check_count(labelled_batch_size, "labelled_batch_size")
    if (x_labelled_NxD is None) != (y_labelled_N is None):
        raise ValueError("give the labelled set as both x_labelled_NxD and y_labelled_N, or "
                         "neither")
    held = x_labelled_NxD is not None
    if held:
        x_l = jnp.asarray(x_labelled_NxD, jnp.float32)
        y_l = jnp.asarray(y_labelled_N)
        drawn_width = (x_l.shape[-1] if draw_inputs is None else jax.eval_shape(
            draw_inputs, jax.random.key(0), x_l).shape[-1])
        if (x_l.ndim != 2 or drawn_width != model.data_dim or y_l.shape != x_l.shape[:1]
                or x_l.shape[0] == 0):
            wanted = (f"x (N, {model.data_dim})" if draw_inputs is None else
                      f"x (N, R) rows that draw_inputs turns into {model.data_dim} values "
                      f"(these give {drawn_width})")
            raise ValueError(f"labelled data must be {wanted} and y (N,) with N >= 1, got "
                             f"{x_l.shape} and {y_l.shape}")
        if not jnp.issubdtype(y_l.dtype, jnp.integer):
            raise TypeError(f"labels must be integers, got dtype {y_l.dtype}")
        y_l = y_l.astype(jnp.int32)
        if int(y_l.min()) < 0 or int(y_l.max()) >= model.num_classes:
            raise ValueError(f"labels must be in [0, {model.num_classes}), got "
                             f"[{int(y_l.min())}, {int(y_l.max())}]")
    def loss_fn(params, batch, key, step):
        del step
        batch_key, pick_key, labelled_key = jax.random.split(key, 3)
        batch = interface.as_batch(model, batch)  # a new dict: replacing its "x" is local
        if draw_inputs is not None:
            draw_key = jax.random.fold_in(key, 3)
            batch["x"] = draw_inputs(jax.random.fold_in(draw_key, 0), batch["x"])
        has_labels = batch["y"] is not None
        terms = interface.elbo_terms(model, params, batch, batch_key)
        unlabelled = jnp.mean(terms.recon_B + terms.kl_B)
        metrics = {"recon": jnp.mean(terms.recon_B), "kl": jnp.mean(terms.kl_B),
                   "unlabelled": unlabelled}
        loss = unlabelled
        if not (held or has_labels):
            return loss, {"loss": loss, **metrics}
        ce_sum, correct, count = jnp.float32(0.0), jnp.float32(0.0), jnp.float32(0.0)
        if has_labels:
            labelled_B = batch["y"] >= 0
            predicted_B = jnp.argmax(semisupervised.classify(model, params, batch["x"]), -1)
            ce_sum -= jnp.sum(terms.extras["log_q_y"])
            correct += jnp.sum(labelled_B & (predicted_B == batch["y"]), dtype=jnp.float32)
            count += jnp.sum(labelled_B, dtype=jnp.float32)
        neg_l = jnp.float32(0.0)
        if held:
            idx = jax.random.randint(pick_key, (labelled_batch_size,), 0, x_l.shape[0])
            xb, yb = x_l[idx], y_l[idx]
            if draw_inputs is not None:
                xb = draw_inputs(jax.random.fold_in(draw_key, 1), xb)
            l_terms = model.apply({"params": params}, xb, yb, labelled_key,
                                  method=semisupervised.M2.labelled_elbo_terms)
            neg_l = jnp.mean(l_terms.recon_B + l_terms.kl_B)
            logits = semisupervised.classify(model, params, xb)
            ce_sum += jnp.sum(semisupervised.classification_loss(logits, yb))
            correct += jnp.sum(jnp.argmax(logits, -1) == yb, dtype=jnp.float32)
            count += labelled_batch_size
        ce = ce_sum / jnp.maximum(count, 1.0)
        loss = labelled_weight * neg_l + unlabelled + alpha * ce
        return loss, {"loss": loss, **metrics, "labelled": neg_l, "classification": ce,
                      "labelled_accuracy": correct / jnp.maximum(count, 1.0)}

    return loss_fn


def make_sequence_loss(model: sequence.SequenceVAE, beta: float = 1.0, warmup_steps: int = 0,
                       word_dropout_rate: float = 0.0, free_bits: float = 0.0) -> LossFn:
    """The sequence VAE's annealed negative ELBO with word dropout (Bowman et al. 2016).

        loss = mean_b [ -log p(x_b | z_b) + kl_weight(step) * KL(q(z | x_b) || N(0, I)) ]

    or, with ``free_bits`` = lambda > 0, mean_b -log p(x_b | z_b) + kl_weight(step) *
    sum_j max(lambda, mean_b KL_bj) (``schedules.free_bits_kl``, Kingma et al. 2016): a latent
    dimension holding less than lambda nats is not pushed further towards the prior.

    on batches ``{"x": tokens_BxL}``, with the model's ``elbo_terms_and_logits``: one
    reparameterized z_b ~ q(z | x_b) and word-dropped decoder inputs (each input token but BOS
    replaced by UNK with probability ``word_dropout_rate``); kl_weight(step) = beta * min(1,
    step / warmup_steps). Without word dropout, recon + kl is ``interface.elbo_terms``'s -ELBO.

    Args:
      model: a ``SequenceVAE``.
      beta: the KL weight after the warm-up, >= 0.
      warmup_steps: steps of the linear warm-up from 0 (0: no annealing).
      word_dropout_rate: in [0, 1).
      free_bits: lambda, nats per latent dimension (0 = off).

    Returns:
      ``loss_fn``; metrics (batch means, nats per sequence) ``loss``, ``recon``, ``kl``,
      ``nelbo`` (recon + kl: the negative ELBO, whatever the weight), ``kl_weight``,
      ``kl_free_bits`` (the floored KL term, with free bits),
      ``token_accuracy`` (teacher-forced argmax over real tokens) and ``nll_per_token``.
    """
    if not isinstance(model, sequence.SequenceVAE):
        raise TypeError(f"make_sequence_loss trains a SequenceVAE, got {type(model).__name__}")
    for name, value in (("beta", beta), ("word_dropout_rate", word_dropout_rate)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if not 0.0 <= word_dropout_rate < 1.0:
        raise ValueError(f"word_dropout_rate must be in [0, 1), got {word_dropout_rate}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    word_dropout_rate = float(word_dropout_rate)
    free_bits = check_free_bits(free_bits, model)

    def loss_fn(params, batch, key, step):
        tokens_BxL = interface.as_batch(model, batch)["x"]
        terms, logits_BxLxV = model.apply({"params": params}, tokens_BxL, key, word_dropout_rate,
                                          method=sequence.SequenceVAE.elbo_terms_and_logits)
        recon_B, kl_B = terms.recon_B, terms.kl_B
        weight = sequence.kl_weight(step, beta, warmup_steps)
        extra = {}
        if free_bits > 0:
            kl_term, _ = schedules.free_bits_kl(terms.kl_BxZ, free_bits)
            loss = jnp.mean(recon_B) + weight * kl_term
            extra["kl_free_bits"] = kl_term
        else:
            loss = jnp.mean(recon_B + weight * kl_B)
        mask_BxL = sequence.token_mask(tokens_BxL)
        correct = jnp.sum((jnp.argmax(logits_BxLxV, -1) == tokens_BxL) * mask_BxL)
        metrics = {"loss": loss, "recon": jnp.mean(recon_B), "kl": jnp.mean(kl_B),
                   "nelbo": jnp.mean(recon_B + kl_B), "kl_weight": weight,
                   "token_accuracy": correct / jnp.sum(mask_BxL),
                   "nll_per_token": jnp.sum(recon_B) / jnp.sum(mask_BxL), **extra}
        return loss, metrics

    return loss_fn
