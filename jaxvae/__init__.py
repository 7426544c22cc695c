"""jaxvae: pure-functional Variational Autoencoders in JAX and Flax.

Every function takes its parameters and PRNG keys as arguments; nothing holds hidden state.
The package is laid out by concept; this module re-exports the public names:

    jaxvae.distributions, jaxvae.likelihoods   the math: reparameterization, KL, log densities
    jaxvae.models        the model interface (models/interface.py) and one module per family
    jaxvae.objectives    loss factories ``make_*_loss -> loss_fn(params, batch, key, step)``
    jaxvae.training      the step and its compiled chunk (step.py), the loop with hooks
                         (loop.py), ``fit`` (fit.py), checkpoints, device placement
    jaxvae.data          datasets as arrays, user files, TFDS, full MNIST, preprocessing
    jaxvae.evaluation    the importance-sampled log-likelihood (likelihood.py), latent views,
                         repair, plots
"""

# Configuration (a TrainConfig of sections, each defined next to its concept)
from jaxvae.config import TrainConfig, data_defaults, validate_config
from jaxvae.data.datasets import DataConfig
from jaxvae.evaluation.likelihood import EvalConfig
from jaxvae.models.registry import ModelConfig
from jaxvae.objectives.losses import ObjectiveConfig
from jaxvae.training.loop import RunConfig
from jaxvae.training.step import OptimizerConfig

# Distributions and likelihoods (pure math)
from jaxvae.distributions import bernoulli_nll, gaussian_kl, gaussian_nll, reparameterize

# Data
from jaxvae.data.datasets import Dataset
from jaxvae.data.datasets import load as load_dataset
from jaxvae.data.preprocessing import binarize, dequantize
from jaxvae.data import standardize  # fit / apply / invert / log_det of per-feature statistics
from jaxvae.data.standardize import Standardization

# Models: the interface every model implements, and the families
from jaxvae.models.interface import ElboTerms, LatentVariableModel, Posterior, log_weights
from jaxvae.models.mlp import (VAE, decode, encode, from_torch, init, interpolate, mlp_vae,
                               reconstruct, reference_vae, sample)
from jaxvae.models.conditional import CVAE
from jaxvae.models.conv import conv_vae
from jaxvae.models.flow import flow_vae
from jaxvae.models.ladder import ladder_vae
from jaxvae.models.vq import VQVAE
from jaxvae.models.m2 import M2
from jaxvae.models.sequence import SequenceVAE, sequence_vae

# Objectives: one contract, loss_fn(params, batch, key, step) -> (loss, metrics)
from jaxvae.objectives.losses import (LossFn, make_elbo_loss, make_iwae_loss, make_m2_loss,
                                      make_sequence_loss, make_vq_loss)
from jaxvae.objectives.bounds import elbo_terms, iwae_bound, likelihood_mean, loss
from jaxvae.objectives.schedules import make_kl_schedule

# Training
from jaxvae.training.fit import FitResult, fit
from jaxvae.training.loop import TrainingDiverged
from jaxvae.training.sequences import SequenceConfig, fit_sequences
from jaxvae.training.step import (TrainState, create_train_state, make_evaluate, make_optimizer,
                                  make_train_chunk, make_train_epoch, make_train_step)

# Evaluation
from jaxvae.evaluation.likelihood import anomaly_score, elbo, log_likelihood
from jaxvae.evaluation.repair import inpaint

__version__ = "0.1.0"

__all__ = [
    # configuration
    "DataConfig", "EvalConfig", "ModelConfig", "ObjectiveConfig", "OptimizerConfig", "RunConfig",
    "TrainConfig", "data_defaults", "validate_config",
    # distributions and likelihoods
    "bernoulli_nll", "gaussian_kl", "gaussian_nll", "reparameterize",
    # data
    "Dataset", "Standardization", "binarize", "dequantize", "load_dataset", "standardize",
    # models
    "CVAE", "ElboTerms", "LatentVariableModel", "M2", "Posterior", "SequenceVAE", "VAE", "VQVAE",
    "conv_vae", "decode", "encode", "flow_vae", "from_torch", "init", "interpolate",
    "ladder_vae", "log_weights", "mlp_vae", "reconstruct", "reference_vae", "sample",
    "sequence_vae",
    # objectives
    "LossFn", "elbo_terms", "iwae_bound", "likelihood_mean", "loss", "make_elbo_loss",
    "make_iwae_loss", "make_kl_schedule", "make_m2_loss", "make_sequence_loss", "make_vq_loss",
    # training
    "FitResult", "SequenceConfig", "TrainState", "TrainingDiverged", "create_train_state", "fit",
    "fit_sequences", "make_evaluate", "make_optimizer", "make_train_chunk", "make_train_epoch",
    "make_train_step",
    # evaluation
    "anomaly_score", "elbo", "inpaint", "log_likelihood",
]
