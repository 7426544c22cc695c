"""jaxvae: pure-functional Variational Autoencoders in JAX and Flax.

Every function takes its parameters and PRNG keys as arguments; nothing holds hidden state.
"""

from jaxvae.config import TrainConfig, validate_config
from jaxvae.data import Dataset, load_digits, load_mnist5k
from jaxvae.distributions import (bernoulli_nll, gaussian_kl, gaussian_log_prob, gaussian_nll,
                                  reparameterize, standard_normal_log_prob)
from jaxvae.trainer import FitResult, fit
from jaxvae.models import (VAE, Decoder, Encoder, decode, encode, from_torch, init, interpolate,
                           mlp_vae, reconstruct, reference_vae, sample, slerp)
from jaxvae.objectives import (elbo_terms, iwae_bound, likelihood_mean, log_importance_weights,
                               loss)
from jaxvae.train import (TrainState, create_train_state, make_evaluate, make_optimizer,
                          make_train_epoch, make_train_step, vae_loss_fn)
from jaxvae.validation import check_data
# issue 7b: architectures (the VQ-VAE builder stays jaxvae.vqvae.vqvae: the module keeps its name)
from jaxvae.conv import ConvVAE, conv_vae
from jaxvae.flows import FlowVAE, flow_loss, flow_vae, planar_flow
from jaxvae.ladder import LadderVAE, ladder_loss, ladder_vae
from jaxvae.vqvae import VQVAE, ema_optimizer, vqvae_loss

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
]
