"""jaxvae: pure-functional Variational Autoencoders in JAX and Flax.

Every function takes its parameters and PRNG keys as arguments; nothing holds hidden state.
"""

from jaxvae.config import TrainConfig, validate_config
from jaxvae.data.datasets import Dataset, load_digits, load_mnist5k
from jaxvae.distributions import (bernoulli_nll, gaussian_kl, gaussian_log_prob, gaussian_nll,
                                  reparameterize, standard_normal_log_prob)
from jaxvae.training.fit import FitResult, fit
from jaxvae.models.mlp import (VAE, Decoder, Encoder, decode, encode, from_torch, init, interpolate,
                           mlp_vae, reconstruct, reference_vae, sample, slerp)
from jaxvae.objectives.bounds import (elbo_terms, iwae_bound, likelihood_mean, log_importance_weights,
                               loss)
from jaxvae.training.step import (TrainState, create_train_state, make_evaluate, make_optimizer,
                          make_train_epoch, make_train_step, vae_loss_fn)
from jaxvae.validation import check_data
# issue 4: data
from jaxvae.data.datasets import dataset_names, process_shard
from jaxvae.data.datasets import load as load_dataset
from jaxvae.training.feeding import prefetch_to_device
from jaxvae.data.preprocessing import binarize, dequantize
from jaxvae.data.tfds_source import DatasetNotPreparedError, MissingDependencyError
# issue 7a: objectives, priors, likelihoods, conditional VAE
from jaxvae.models.conditional import CVAE, generate
from jaxvae.likelihoods import (bits_per_dim, discretized_logistic_log_prob, gaussian_learned_nll,
                                logistic_nll)
from jaxvae.models.priors import Mixture, mixture_log_prob
from jaxvae.objectives.schedules import free_bits_kl, make_kl_schedule
from jaxvae.models.builders import ZooVAE, elbo_loss_fn, iwae_loss_fn, log_prior_fn
from jaxvae.training.checkpoint import CheckpointManager
from jaxvae.training.loop import TrainingDiverged
from jaxvae.training.step import make_train_chunk
from jaxvae.validation import check_array, check_key
# issue 6: evaluation
from jaxvae.evaluation.likelihood import anomaly_score, elbo, log_likelihood
# issue 9: sequence VAE, semi-supervised M2, repair
from jaxvae.evaluation.repair import inpaint
from jaxvae.models.m2 import M2, m2_loss_fn
from jaxvae.models.sequence import SequenceVAE, sequence_loss_fn, sequence_vae
from jaxvae.training.sequences import SequenceConfig, fit_sequences
from jaxvae.data.vocab import Vocabulary
# issue 7b: architectures (the VQ-VAE builder stays jaxvae.models.vq.vqvae: the module keeps its name)
from jaxvae.models.conv import ConvVAE, conv_vae
from jaxvae.models.flow import FlowVAE, flow_loss, flow_vae, planar_flow
from jaxvae.models.ladder import LadderVAE, ladder_loss, ladder_vae
from jaxvae.models.vq import VQVAE, ema_optimizer, vqvae_loss

# the model interface and the loss contract
from jaxvae.models.interface import ElboTerms, LatentVariableModel, Posterior, log_weights
from jaxvae.objectives.losses import (LossFn, make_elbo_loss, make_iwae_loss, make_m2_loss,
                           make_sequence_loss, make_vq_loss)

__version__ = "0.1.0"

__all__ = [
    "Dataset",
    "Decoder",
    "Encoder",
    "FitResult",
    "TrainConfig",
    "TrainState",
    "VAE",
    "bernoulli_nll",
    "check_data",
    "create_train_state",
    "decode",
    "elbo_terms",
    "encode",
    "fit",
    "from_torch",
    "gaussian_kl",
    "gaussian_log_prob",
    "gaussian_nll",
    "init",
    "interpolate",
    "iwae_bound",
    "likelihood_mean",
    "load_digits",
    "load_mnist5k",
    "log_importance_weights",
    "loss",
    "make_evaluate",
    "make_optimizer",
    "make_train_epoch",
    "make_train_step",
    "mlp_vae",
    "reconstruct",
    "reference_vae",
    "reparameterize",
    "sample",
    "slerp",
    "standard_normal_log_prob",
    "vae_loss_fn",
    "validate_config",
    # issue 4: data
    "DatasetNotPreparedError",
    "MissingDependencyError",
    "binarize",
    "dataset_names",
    "dequantize",
    "load_dataset",
    "prefetch_to_device",
    "process_shard",
    # issue 7a
    "CVAE",
    "Mixture",
    "ZooVAE",
    "bits_per_dim",
    "discretized_logistic_log_prob",
    "elbo_loss_fn",
    "free_bits_kl",
    "gaussian_learned_nll",
    "generate",
    "iwae_loss_fn",
    "log_prior_fn",
    "logistic_nll",
    "make_kl_schedule",
    "mixture_log_prob",
    "CheckpointManager",
    "TrainingDiverged",
    "make_train_chunk",
    "check_array",
    "check_key",
    # issue 6: evaluation
    "anomaly_score",
    "elbo",
    "log_likelihood",
    # issue 9: sequence VAE, semi-supervised M2, repair
    "M2",
    "SequenceConfig",
    "SequenceVAE",
    "Vocabulary",
    "fit_sequences",
    "inpaint",
    "m2_loss_fn",
    "sequence_loss_fn",
    "sequence_vae",
    # issue 7b: architectures
    "ConvVAE",
    "FlowVAE",
    "LadderVAE",
    "VQVAE",
    "conv_vae",
    "ema_optimizer",
    "flow_loss",
    "flow_vae",
    "ladder_loss",
    "ladder_vae",
    "planar_flow",
    "vqvae_loss",
    # the model interface and the loss contract
    "ElboTerms",
    "LatentVariableModel",
    "LossFn",
    "Posterior",
    "log_weights",
    "make_elbo_loss",
    "make_iwae_loss",
    "make_m2_loss",
    "make_sequence_loss",
    "make_vq_loss",
]
