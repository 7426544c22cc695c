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

# Configuration (a TrainConfig of sections, each defined next to its concept) and input checks
from jaxvae.config import TrainConfig, validate_config
from jaxvae.data.datasets import DataConfig
from jaxvae.evaluation.likelihood import EvalConfig
from jaxvae.models.registry import ModelConfig
from jaxvae.objectives.losses import ObjectiveConfig
from jaxvae.training.loop import RunConfig
from jaxvae.training.step import OptimizerConfig
from jaxvae.validation import check_array, check_data, check_key

# Distributions and likelihoods (pure math)
from jaxvae.distributions import (bernoulli_nll, gaussian_kl, gaussian_log_prob, gaussian_nll,
                                  reparameterize, standard_normal_log_prob)
from jaxvae.likelihoods import (bits_per_dim, discretized_logistic_log_prob, gaussian_learned_nll,
                                logistic_nll)
from jaxvae.models.priors import Mixture, mixture_log_prob

# Data
from jaxvae.data.datasets import (Dataset, dataset_names, load_digits, load_mnist5k,
                                  process_shard)
from jaxvae.data.datasets import load as load_dataset
from jaxvae.data.preprocessing import binarize, dequantize
from jaxvae.data.tfds_source import DatasetNotPreparedError, MissingDependencyError
from jaxvae.data.vocab import Vocabulary
from jaxvae.training.feeding import prefetch_to_device

# Models: the interface every model implements, and the families
from jaxvae.models.interface import ElboTerms, LatentVariableModel, Posterior, log_weights
from jaxvae.models.mlp import (VAE, Decoder, Encoder, decode, encode, from_torch, init,
                               interpolate, mlp_vae, reconstruct, reference_vae, sample, slerp)
from jaxvae.models.conditional import CVAE, generate
from jaxvae.models.conv import ConvVAE, conv_vae
from jaxvae.models.flow import FlowVAE, flow_vae, planar_flow
from jaxvae.models.ladder import LadderVAE, ladder_vae
from jaxvae.models.vq import VQVAE, ema_optimizer
from jaxvae.models.m2 import M2
from jaxvae.models.sequence import SequenceVAE, sequence_vae

# Objectives: one contract, loss_fn(params, batch, key, step) -> (loss, metrics)
from jaxvae.objectives.losses import (LossFn, make_elbo_loss, make_iwae_loss, make_m2_loss,
                                      make_sequence_loss, make_vq_loss)
from jaxvae.objectives.bounds import (elbo_terms, iwae_bound, likelihood_mean,
                                      log_importance_weights, loss)
from jaxvae.objectives.schedules import free_bits_kl, make_kl_schedule
# Older names of the same objectives
from jaxvae.models.builders import elbo_loss_fn, iwae_loss_fn, log_prior_fn
from jaxvae.models.flow import flow_loss
from jaxvae.models.ladder import ladder_loss
from jaxvae.models.m2 import m2_loss_fn
from jaxvae.models.sequence import sequence_loss_fn
from jaxvae.models.vq import vqvae_loss

# Training
from jaxvae.training.checkpoint import CheckpointManager
from jaxvae.training.fit import FitResult, fit
from jaxvae.training.loop import TrainingDiverged
from jaxvae.training.sequences import SequenceConfig, fit_sequences
from jaxvae.training.step import (TrainState, create_train_state, make_evaluate, make_optimizer,
                                  make_train_chunk, make_train_epoch, make_train_step,
                                  vae_loss_fn)

# Evaluation
from jaxvae.evaluation.likelihood import anomaly_score, elbo, log_likelihood
from jaxvae.evaluation.repair import inpaint

__version__ = "0.1.0"

__all__ = [
    # configuration and input checks
    "DataConfig", "EvalConfig", "ModelConfig", "ObjectiveConfig", "OptimizerConfig", "RunConfig",
    "TrainConfig", "check_array", "check_data", "check_key", "validate_config",
    # distributions and likelihoods
    "Mixture", "bernoulli_nll", "bits_per_dim", "discretized_logistic_log_prob", "gaussian_kl",
    "gaussian_learned_nll", "gaussian_log_prob", "gaussian_nll", "logistic_nll",
    "mixture_log_prob", "reparameterize", "standard_normal_log_prob",
    # data
    "Dataset", "DatasetNotPreparedError", "MissingDependencyError", "Vocabulary", "binarize",
    "dataset_names", "dequantize", "load_dataset", "load_digits", "load_mnist5k",
    "prefetch_to_device", "process_shard",
    # models
    "CVAE", "ConvVAE", "Decoder", "ElboTerms", "Encoder", "FlowVAE", "LadderVAE",
    "LatentVariableModel", "M2", "Posterior", "SequenceVAE", "VAE", "VQVAE", "conv_vae", "decode",
    "ema_optimizer", "encode", "flow_vae", "from_torch", "generate", "init", "interpolate",
    "ladder_vae", "log_weights", "mlp_vae", "planar_flow", "reconstruct", "reference_vae",
    "sample", "sequence_vae", "slerp",
    # objectives
    "LossFn", "elbo_loss_fn", "elbo_terms", "flow_loss", "free_bits_kl", "iwae_bound",
    "iwae_loss_fn", "ladder_loss", "likelihood_mean", "log_importance_weights", "log_prior_fn",
    "loss", "m2_loss_fn", "make_elbo_loss", "make_iwae_loss", "make_kl_schedule", "make_m2_loss",
    "make_sequence_loss", "make_vq_loss", "sequence_loss_fn", "vqvae_loss",
    # training
    "CheckpointManager", "FitResult", "SequenceConfig", "TrainState", "TrainingDiverged",
    "create_train_state", "fit", "fit_sequences", "make_evaluate", "make_optimizer",
    "make_train_chunk", "make_train_epoch", "make_train_step", "vae_loss_fn",
    # evaluation
    "anomaly_score", "elbo", "inpaint", "log_likelihood",
]
