"""Flax (linen) encoders, decoders and the MLP VAE, used as pure functions.

The MLP VAE implements the model interface of ``jaxvae.models.interface`` with two methods of its own,

    encode(x_BxD) -> (mean_BxZ, logvar_BxZ)      the Gaussian posterior q(z | x)
    decode(z_BxZ) -> out_BxD                     the parameters of p(x | z) (e.g. Bernoulli logits)

and the attributes ``latent_dim`` and ``data_shape`` (the shape of one example). Parameters live
outside the module: ``init`` makes them, ``encode`` / ``decode`` apply them. No method draws
random numbers; every key is an argument of the functions in ``jaxvae.objectives.bounds`` and below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import distributions, likelihoods, validation
from jaxvae.models import interface
from jaxvae.models import precision
from jaxvae.models import priors

Params = Any


def _torch_uniform(fan_in: int) -> nn.initializers.Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default nn.Linear init (weights and biases)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense(features: int, fan_in: int, torch_init: bool, name: str, dtype: Any = None
          ) -> nn.Dense:
    """A Dense layer with either PyTorch's default init or Flax's (lecun normal, zero bias),
    computing in ``dtype`` (``jaxvae.models.precision``: None is float32)."""
    kwargs = precision.dense_kwargs(dtype)
    if torch_init:
        return nn.Dense(features, kernel_init=_torch_uniform(fan_in),
                        bias_init=_torch_uniform(fan_in), name=name, **kwargs)
    return nn.Dense(features, name=name, **kwargs)


ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}  # the hidden layers' nonlinearity f


def check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {list(ACTIVATIONS)}")
    return name


class MLP(nn.Module):
    """Dense layers with a nonlinearity f: x -> f(W_1 x + b_1) -> ... -> f(W_n h + b_n).

    ``activation`` names f in ``ACTIVATIONS``: relu (the PyTorch reference's) or tanh (the
    IWAE paper's, Burda et al. 2016). ``dtype``: the products' compute dtype
    (``jaxvae.models.precision``; None is float32).
    """

    hidden: Sequence[int]
    torch_init: bool = True
    activation: str = "relu"
    dtype: Any = None

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        f = ACTIVATIONS[self.activation]
        for i, features in enumerate(self.hidden):
            h = f(dense(features, h.shape[-1], self.torch_init, f"hidden_{i}", self.dtype)(h))
        return h


class Encoder(nn.Module):
    """MLP encoder of q(z | x) = N(mean(x), diag(exp(logvar(x)))).

    Attributes:
      hidden: widths of the hidden layers.
      latent_dim: Z, the size of z.
      torch_init: PyTorch's default layer init (U(+-1/sqrt(fan_in))) instead of Flax's.
      activation: the hidden layers' nonlinearity (``ACTIVATIONS``).
      dtype: the products' compute dtype (``jaxvae.models.precision``; None is float32).
    """

    hidden: Sequence[int] = (400,)
    latent_dim: int = 20
    torch_init: bool = True
    activation: str = "relu"
    dtype: Any = None

    @nn.compact
    def __call__(self, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        h_BxH = MLP(self.hidden, self.torch_init, self.activation, self.dtype,
                    name="mlp")(x_BxD.reshape(x_BxD.shape[0], -1))
        fan_in = h_BxH.shape[-1]
        mean_BxZ = dense(self.latent_dim, fan_in, self.torch_init, "mean", self.dtype)(h_BxH)
        logvar_BxZ = dense(self.latent_dim, fan_in, self.torch_init, "logvar", self.dtype)(h_BxH)
        return mean_BxZ, logvar_BxZ


class Decoder(nn.Module):
    """MLP decoder: z -> the parameters of p(x | z), one output per data dimension.

    For the Bernoulli likelihood the outputs are logits (sigmoid(logits) is the mean); for the
    Gaussian likelihood they are the mean itself.

    Attributes:
      hidden: widths of the hidden layers.
      data_shape: the shape of one example; outputs are reshaped to (B, *data_shape).
      torch_init: PyTorch's default layer init instead of Flax's.
      activation: the hidden layers' nonlinearity (``ACTIVATIONS``).
      dtype: the products' compute dtype (``jaxvae.models.precision``; None is float32).
    """

    hidden: Sequence[int] = (400,)
    data_shape: tuple[int, ...] = (784,)
    torch_init: bool = True
    activation: str = "relu"
    dtype: Any = None

    @nn.compact
    def __call__(self, z_BxZ: jax.Array) -> jax.Array:
        h_BxH = MLP(self.hidden, self.torch_init, self.activation, self.dtype,
                    name="mlp")(z_BxZ)
        out_BxD = dense(int(np.prod(self.data_shape)), h_BxH.shape[-1], self.torch_init,
                        "out", self.dtype)(h_BxH)
        return out_BxD.reshape((z_BxZ.shape[0],) + tuple(self.data_shape))


class VAE(interface.LatentVariableModel):
    """A Gaussian-latent VAE with MLP encoder and decoder, a choice of prior and of likelihood.

    The decoder mirrors the encoder and is sized by the likelihood (two outputs per dimension
    for learned scales, see ``jaxvae.likelihoods``). The prior is a submodule ``prior`` (see
    ``jaxvae.models.priors``) whose parameters live in ``params["prior"]``; the standard prior has
    none, so that with a one-output likelihood (bernoulli, gaussian) the parameters are exactly
    ``encoder`` and ``decoder``, those of the PyTorch reference (``from_torch``).

    Attributes:
      hidden: encoder hidden widths; the decoder uses them reversed.
      latent_dim: Z.
      data_shape: the shape of one example, e.g. (784,).
      torch_init: PyTorch's default layer init (the reference's) instead of Flax's.
      likelihood: a name from ``jaxvae.likelihoods.LIKELIHOODS``; sets the decoder's outputs.
      prior_name: one of ``jaxvae.models.priors.PRIORS``.
      num_components: K of the mog and vamp priors.
      activation: the hidden layers' nonlinearity (``ACTIVATIONS``: relu, tanh).
      dtype: the compute dtype of the encoder's and decoder's products
        (``jaxvae.models.precision``: None is float32, ``jnp.bfloat16`` rounds their inputs);
        the parameters, the prior and the outputs stay float32.
    """

    hidden: Sequence[int] = (400,)
    latent_dim: int = 20
    data_shape: tuple[int, ...] = (784,)
    torch_init: bool = True
    likelihood: str = "bernoulli"
    prior_name: str = "standard"
    num_components: int = 10
    activation: str = "relu"
    dtype: Any = None

    def setup(self):
        self.encoder = Encoder(tuple(self.hidden), self.latent_dim, self.torch_init,
                               self.activation, self.dtype)
        out_shape = tuple(self.data_shape)
        if likelihoods.output_channels(self.likelihood) == 2 and not self._global_scale:
            out_shape = out_shape + (2,)  # [..., 0] location, [..., 1] raw log-scale
        self.decoder = Decoder(tuple(reversed(self.hidden)), out_shape, self.torch_init,
                               self.activation, self.dtype)
        if self._global_scale:
            self.output_logvar = self.param("output_logvar", nn.initializers.zeros, ())
        self.prior = priors.make_prior(self.prior_name, self.latent_dim, tuple(self.data_shape),
                                       self.num_components)

    @property
    def analytic_kl_per_dim(self) -> bool:
        return self.prior_name in priors.ANALYTIC_KL

    @property
    def _global_scale(self) -> bool:
        return self.likelihood == "gaussian_global"

    def _outputs(self, out: jax.Array) -> jax.Array:
        if self._global_scale:  # one learned log-variance, broadcast to every dimension
            return jnp.stack([out, jnp.broadcast_to(self.output_logvar, out.shape)], axis=-1)
        return out

    def encode(self, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encoder(x_BxD)

    def decode(self, z_BxZ: jax.Array) -> jax.Array:
        return self._outputs(self.decoder(z_BxZ))

    def prior_mixture(self) -> priors.Mixture:
        """The prior as a mixture (K = 1 for the Gaussian priors)."""
        if self.prior_name == "vamp":
            return priors.vamp_mixture(*self.encode(self.prior()))
        return self.prior()

    def log_prior(self, z: jax.Array) -> jax.Array:
        """log p(z) over the last axis; any leading axes."""
        if self.prior_name == "standard":
            return distributions.standard_normal_log_prob(z)
        return priors.mixture_log_prob(z, self.prior_mixture())

    def analytic_kl(self, mean_BxZ: jax.Array, logvar_BxZ: jax.Array
                    ) -> tuple[jax.Array, jax.Array] | None:
        """Closed-form KL for the standard and diagonal priors; None for the mixtures."""
        if self.prior_name == "standard":
            return (distributions.gaussian_kl(mean_BxZ, logvar_BxZ),
                    priors.standard_kl_per_dim(mean_BxZ, logvar_BxZ))
        if self.prior_name not in priors.ANALYTIC_KL:
            return None
        kl_BxZ = self.kl_per_dim(mean_BxZ, logvar_BxZ)
        return jnp.sum(kl_BxZ, axis=-1), kl_BxZ

    def kl_per_dim(self, mean_BxZ: jax.Array, logvar_BxZ: jax.Array) -> jax.Array:
        """Analytic KL(q(z|x) || p(z)) per latent dimension (standard and diagonal priors)."""
        if self.prior_name == "standard":
            return priors.standard_kl_per_dim(mean_BxZ, logvar_BxZ)
        mixture = self.prior_mixture()
        return priors.diagonal_kl_per_dim(mean_BxZ, logvar_BxZ, mixture.mean_KxZ,
                                          mixture.logvar_KxZ)

    def sample_latent(self, key: jax.Array, n: int) -> jax.Array:
        """n draws z_NxZ from the prior."""
        if self.prior_name == "standard":
            return jax.random.normal(key, (n, self.latent_dim))
        return priors.sample_mixture(key, n, self.prior_mixture())

    def sample_outputs(self, key: jax.Array, n: int) -> jax.Array:
        """Decoder outputs of n draws from the prior (what ``jaxvae.sample`` returns)."""
        return self.decode(self.sample_latent(key, n))

    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        """Decodes the posterior mean and touches the prior (creates every parameter)."""
        mean_BxZ, _ = self.encode(x_BxD)
        self.prior_mixture()
        return self.decode(mean_BxZ)


def mlp_vae(hidden: Sequence[int] = (400,), latent_dim: int = 20,
            data_shape: Sequence[int] = (784,), torch_init: bool = True,
            likelihood: str = "bernoulli", prior: str = "standard", num_components: int = 10,
            activation: str = "relu", precision_name: str = "float32") -> VAE:
    """An MLP VAE, validated: every width and the latent size must be positive integers.

    Args:
      hidden, latent_dim, data_shape, torch_init, likelihood: as the ``VAE`` attributes.
      prior: one of ``jaxvae.models.priors.PRIORS`` (the ``VAE``'s ``prior_name``).
      num_components: K of the mog and vamp priors.
      activation: the hidden layers' nonlinearity: relu or tanh (``ACTIVATIONS``).
      precision_name: float32 or bfloat16 (``jaxvae.models.precision.PRECISIONS``).

    Returns:
      the ``VAE`` module (no parameters: ``init`` makes them).

    Examples:
      >>> import jaxvae
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> model.latent_dim, model.data_shape, model.likelihood, model.prior_name
      (2, (4,), 'bernoulli', 'standard')
    """
    hidden = tuple(hidden)
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, (int, np.integer)):
        raise TypeError(f"latent_dim must be an int, got {type(latent_dim).__name__}")
    if latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
    if any(not isinstance(h, (int, np.integer)) or h < 1 for h in hidden):
        raise ValueError(f"hidden sizes must be positive ints, got {hidden}")
    data_shape = tuple(int(d) for d in data_shape)
    if not data_shape or any(d < 1 for d in data_shape):
        raise ValueError(f"data_shape must be non-empty with positive sizes, got {data_shape}")
    likelihoods.check_likelihood(likelihood)
    priors.check_prior(prior, num_components)
    check_activation(activation)
    return VAE(hidden, int(latent_dim), data_shape, torch_init, likelihood, prior,
               int(num_components), activation, precision.compute_dtype(precision_name))


def reference_vae() -> VAE:
    """The pytorch/examples VAE: 784 -> 400 ReLU -> (mean 20, logvar 20); 20 -> 400 ReLU -> 784.

    The decoder outputs Bernoulli logits; sigmoid(logits) is the reference's ``recon_x``.
    Layers start from PyTorch's default init so that training matches the reference.
    """
    return VAE(hidden=(400,), latent_dim=20, data_shape=(784,), torch_init=True)


# ---------------------------------------------------------------------------------------------
# The functional API: parameters in, arrays out.

_OVERFLOW = ("the inputs overflow the model; scale the data (e.g. to [0, 1]) or check the "
             "parameters for NaN (e.g. from a diverged run)")


def _example_size(model: nn.Module) -> int | None:
    shape = getattr(model, "data_shape", None)
    return None if shape is None else int(np.prod(shape))


def _check_params(params: Params) -> None:
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be the parameter dict made by jaxvae.init(model, key), got "
                        f"{type(params).__name__}")


init = interface.init  # one init for every model of the interface


def encode(model: nn.Module, params: Params, x_BxD: jax.Array, labels: jax.Array | None = None
           ) -> tuple[jax.Array, jax.Array]:
    """q(z | x): returns ``(mean_BxZ, logvar_BxZ)``. ``labels``: for conditional models only.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxvae
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params = jaxvae.init(model, jax.random.key(0))
      >>> mean, logvar = jaxvae.encode(model, params, jnp.zeros((3, 4)))  # x_BxD, B = 3
      >>> mean.shape, logvar.shape
      ((3, 2), (3, 2))
    """
    _check_params(params)
    x_BxD = validation.check_array(x_BxD, "x", min_ndim=2, example_size=_example_size(model))
    cond = () if labels is None else (labels,)
    out = interface.apply_method(model, params, "encode", x_BxD, *cond)
    validation.check_finite_output(out, "the encoder output (mean, logvar)", _OVERFLOW)
    return out


def decode(model: nn.Module, params: Params, z_BxZ: jax.Array, labels: jax.Array | None = None
           ) -> jax.Array:
    """p(x | z): returns the decoder outputs (Bernoulli logits for the reference VAE).

    ``z_BxZ`` -> ``(B, *data_shape)`` for one-output likelihoods (bernoulli, gaussian);
    ``labels``: for conditional models only.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxvae
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params = jaxvae.init(model, jax.random.key(0))
      >>> jaxvae.decode(model, params, jnp.zeros((3, 2))).shape  # z_BxZ -> logits_BxD
      (3, 4)
    """
    _check_params(params)
    z_BxZ = validation.check_array(z_BxZ, "z", ndim=2,
                                   last_dim=getattr(model, "latent_dim", None))
    cond = () if labels is None else (labels,)
    out = interface.apply_method(model, params, "decode", z_BxZ, *cond)
    validation.check_finite_output(out, "the decoder output", _OVERFLOW)
    return out


def sample(model: nn.Module, params: Params, key: jax.Array, n: int) -> jax.Array:
    """Draws n examples' decoder outputs from the prior: z ~ N(0, I), returns decode(z).

    Returns logits for a Bernoulli model: use ``jaxvae.likelihood_mean`` (sigmoid) for images.
    A model with its own prior or sampler (a ``sample_outputs(key, n)`` method: learned priors,
    the conditional VAE, VQ-VAE, ladder VAE) draws from it instead.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxvae
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params = jaxvae.init(model, jax.random.key(0))
      >>> logits = jaxvae.sample(model, params, jax.random.key(1), 5)
      >>> logits.shape
      (5, 4)
      >>> images = jaxvae.likelihood_mean("bernoulli", logits)  # sigmoid(logits)
      >>> bool(jnp.all((images > 0) & (images < 1)))
      True
    """
    validation.check_key(key)
    n = validation.check_count(n, "n (the number of samples)")
    if hasattr(model, "sample_outputs"):
        return interface.apply_method(model, params, "sample_outputs", key, n)
    z_NxZ = jax.random.normal(key, (n, model.latent_dim))
    return decode(model, params, z_NxZ)


def reconstruct(model: nn.Module, params: Params, x_BxD: jax.Array, key: jax.Array | None = None,
                labels: jax.Array | None = None) -> jax.Array:
    """decode(z) with z ~ q(z | x) drawn with ``key``, or z = the posterior mean if key is None.

    ``labels``: the classes of x, for conditional models only. A model with its own
    ``reconstruct_outputs`` (VQ-VAE, ladder, flow) uses it.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxvae
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params = jaxvae.init(model, jax.random.key(0))
      >>> x = jnp.zeros((3, 4))
      >>> jaxvae.reconstruct(model, params, x, jax.random.key(1)).shape  # z ~ q(z | x)
      (3, 4)
      >>> mean, _ = jaxvae.encode(model, params, x)  # without a key: decode(mean)
      >>> bool(jnp.all(jaxvae.reconstruct(model, params, x) == jaxvae.decode(model, params, mean)))
      True
    """
    if key is not None:
        validation.check_key(key)
    if isinstance(model, interface.LatentVariableModel):
        labels = labels if model.conditional else None  # unconditional models ignore them
        if type(model).reconstruct_outputs is not interface.LatentVariableModel.reconstruct_outputs:
            return interface.reconstruct(model, params, {"x": x_BxD, "y": labels}, key)
    mean_BxZ, logvar_BxZ = encode(model, params, x_BxD, labels)
    z_BxZ = mean_BxZ if key is None else distributions.reparameterize(key, mean_BxZ, logvar_BxZ)
    return decode(model, params, z_BxZ, labels)


def slerp(z0: jax.Array, z1: jax.Array, t: jax.Array) -> jax.Array:
    """Spherical interpolation: sin((1-t) w)/sin(w) z0 + sin(t w)/sin(w) z1, w = angle(z0, z1).

    z0, z1: ``(Z,)``; t: ``(T,)``; returns ``(T, Z)``. Falls back to linear interpolation when z0 and z1 are (nearly) parallel.
    """
    z0 = validation.check_array(z0, "z0", ndim=1)
    z1 = validation.check_array(z1, "z1", ndim=1, last_dim=z0.shape[0])
    t = validation.check_array(t, "t", ndim=1)
    t, z0, z1 = t[:, None], z0[None, :], z1[None, :]
    cos = jnp.sum(z0 * z1) / (jnp.linalg.norm(z0) * jnp.linalg.norm(z1) + 1e-12)
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    sin = jnp.sin(omega)
    linear = (1.0 - t) * z0 + t * z1
    spherical = (jnp.sin((1.0 - t) * omega) * z0 + jnp.sin(t * omega) * z1) / jnp.where(
        sin > 1e-6, sin, 1.0)
    return jnp.where(sin > 1e-6, spherical, linear)


def interpolate(model: nn.Module, params: Params, x0: jax.Array, x1: jax.Array, steps: int,
                spherical: bool = False) -> jax.Array:
    """Decodes ``steps`` points on the path between the posterior means of x0 and x1.

    Args:
      x0, x1: two examples, shape ``data_shape`` (or a batch of one).
      steps: number of points, >= 2, including both ends.
      spherical: slerp instead of a straight line between the two means.

    Returns:
      decoder outputs of shape ``(steps, *data_shape)``; the first decodes mean(x0), the last
      mean(x1).
    """
    validation.check_count(steps, "steps", minimum=1)
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (both end points), got {steps}")
    shape = tuple(model.data_shape)
    for name, x in (("x0", x0), ("x1", x1)):
        x = validation.check_array(x, name)
        if x.size != int(np.prod(shape)):
            raise ValueError(f"{name} must be one example of shape {shape} (or a batch of one), "
                             f"got shape {tuple(x.shape)}")
    pair = jnp.stack([jnp.reshape(x0, shape), jnp.reshape(x1, shape)])
    mean_2xZ, _ = encode(model, params, pair)
    t_S = jnp.linspace(0.0, 1.0, steps)
    if spherical:
        z_SxZ = slerp(mean_2xZ[0], mean_2xZ[1], t_S)
    else:
        z_SxZ = (1.0 - t_S[:, None]) * mean_2xZ[:1] + t_S[:, None] * mean_2xZ[1:]
    return decode(model, params, z_SxZ)


# PyTorch reference layer name -> (our module path). Torch stores Linear weights as (out, in).
_TORCH_LAYERS = {
    "fc1": ("encoder", "mlp", "hidden_0"),
    "fc21": ("encoder", "mean"),
    "fc22": ("encoder", "logvar"),
    "fc3": ("decoder", "mlp", "hidden_0"),
    "fc4": ("decoder", "out"),
}


def from_torch(model: nn.Module, state_dict: Mapping[str, Any]) -> Params:
    """Converts a pytorch/examples VAE ``state_dict`` into parameters of ``model``.

    Keys ``fc1, fc21, fc22, fc3, fc4`` + ``.weight`` (out, in) / ``.bias`` (out,), as torch
    tensors or numpy arrays. Kernels are transposed to Flax's (in, out) layout.

    Raises:
      ValueError: naming every missing key and every shape that does not fit ``model``.
    """
    expected = jax.eval_shape(lambda: init(model, jax.random.key(0)))
    missing, wrong = [], []
    params: dict = {}
    for torch_name, path in _TORCH_LAYERS.items():
        node = expected
        try:
            for part in path:
                node = node[part]
        except KeyError:
            raise ValueError(f"model has no layer {'/'.join(path)} for torch layer {torch_name}; "
                             "from_torch converts the reference MLP VAE (one hidden layer)") from None
        leaf = params
        for part in path:
            leaf = leaf.setdefault(part, {})
        for suffix, ours, transpose in (("weight", "kernel", True), ("bias", "bias", False)):
            key = f"{torch_name}.{suffix}"
            if key not in state_dict:
                missing.append(key)
                continue
            value = state_dict[key]
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            value = np.asarray(value, np.float32)
            value = value.T if transpose else value
            if value.shape != node[ours].shape:
                wrong.append(f"{key}: got {value.shape[::-1] if transpose else value.shape}, "
                             f"expected {node[ours].shape[::-1] if transpose else node[ours].shape}")
                continue
            leaf[ours] = jnp.asarray(value)
    if missing or wrong:
        problems = []
        if missing:
            problems.append("missing keys: " + ", ".join(missing))
        if wrong:
            problems.append("wrong shapes: " + "; ".join(wrong))
        raise ValueError("cannot convert the torch state_dict: " + " | ".join(problems))
    return params
