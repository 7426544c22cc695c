"""Data-parallel training over all local devices: ``jax.pmap`` and ``jax.jit`` + NamedSharding.

Both forms take the same global batch as the single-device step and give the same update:
gradients are averaged over devices (each device's loss is the mean over its equal share of the
batch, so the mean of the device means is the global mean) and each device draws its own rows of
the global batch's reparameterization noise (``train.vae_loss_fn(..., axis_name=...)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvae.training import step as train

AXIS = "data"


def check_divisible(batch_size: int, num_devices: int) -> None:
    """Raises ValueError unless the global batch splits evenly over the devices."""
    if batch_size % num_devices:
        raise ValueError(f"batch size {batch_size} does not split evenly over {num_devices} "
                         f"devices: use a multiple of {num_devices}")


# ----------------------------------------------------------------------------------- pmap


def replicate(tree: Any, devices: list | None = None) -> Any:
    """A copy of every leaf per device, stacked on a leading device axis and placed for pmap."""
    devices = devices or jax.local_devices()
    sharding = NamedSharding(Mesh(np.asarray(devices), ("devices",)), P("devices"))
    stack = lambda a: np.broadcast_to(np.asarray(a), (len(devices),) + np.shape(a))
    return jax.tree.map(lambda a: jax.device_put(stack(a), sharding), tree)


def unreplicate(tree: Any) -> Any:
    """The first device's copy of a replicated pytree."""
    return jax.tree.map(lambda a: a[0], tree)


def shard_batch(batch: Any, num_devices: int) -> Any:
    """(B, ...) -> (num_devices, B / num_devices, ...), device-major, in order."""
    def split(a):
        check_divisible(a.shape[0], num_devices)
        return a.reshape((num_devices, a.shape[0] // num_devices) + a.shape[1:])
    return jax.tree.map(split, batch)


def make_pmap_train_step(loss_fn: train.LossFn, tx: optax.GradientTransformation,
                         axis_name: str = AXIS, devices: list | None = None) -> Callable:
    """``pmap``-ed ``step(replicated_state, sharded_batch, run_key)``; gradients ``pmean``-ed.

    ``loss_fn`` should be made with the same ``axis_name`` (see ``train.vae_loss_fn``) so each
    device draws its rows of the global noise. ``run_key`` is broadcast (not replicated).
    """
    step = train.train_step_fn(loss_fn, tx, axis_name=axis_name)
    return jax.pmap(step, axis_name=axis_name, in_axes=(0, 0, None), donate_argnums=0,
                    devices=devices)


# ----------------------------------------------------------------- jit + NamedSharding


def make_mesh(devices: list | None = None, axis_name: str = AXIS) -> Mesh:
    """A 1-D mesh over the given (default: all) devices with an Auto (compiler-chosen) axis."""
    devices = devices or jax.devices()
    return Mesh(np.asarray(devices), (axis_name,),
                axis_types=(jax.sharding.AxisType.Auto,))


def make_sharded_train_step(loss_fn: train.LossFn, tx: optax.GradientTransformation,
                            mesh: Mesh, axis_name: str = AXIS) -> Callable:
    """The single-device step compiled over ``mesh``: batch split on ``axis_name``, state replicated.

    ``loss_fn`` is the plain single-device objective (no axis name): the program is the global
    computation and XLA inserts the gradient all-reduce, so results equal the single-device step
    up to float summation order.
    """
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(axis_name))
    step = train.train_step_fn(loss_fn, tx)
    return jax.jit(step, in_shardings=(replicated, batch_sharding, replicated),
                   out_shardings=(replicated, replicated), donate_argnums=0)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf on all devices of the mesh (``P()``)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def put_sharded(batch: Any, mesh: Mesh, axis_name: str = AXIS) -> Any:
    """Splits the leading (batch) axis of every leaf over ``axis_name``."""
    n = mesh.shape[axis_name]
    jax.tree.map(lambda a: check_divisible(a.shape[0], n), batch)
    return jax.device_put(batch, NamedSharding(mesh, P(axis_name)))
