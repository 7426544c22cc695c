"""Where the training data lives and how each chunk's batches reach the devices.

The training loop (``jaxvae.training.loop``) runs every chunk of steps through the one compiled builder
``train.make_train_chunk``; a *feed* decides only where the data is and what the chunk is given:

* ``DeviceFeed``: the data is put on the devices once; a chunk receives example indices and
  gathers the batches inside the compiled program (the fast path);
* ``HostFeed``: the data stays in host memory (numpy or ``np.memmap``); a chunk receives its
  batches, gathered on the host and sent ahead (prefetched) while the previous group of steps
  runs;
* ``ProcessFeed``: several processes (``jax.distributed``), each holding its own block of the
  examples; a chunk receives global batches assembled from every process's local rows.

All three run the epoch's steps in the order of ``permutation(fold_in(shuffle_key, epoch), N)``
with the same step keys, so they train the same model (to float32 summation order).

Data parallelism: within one process the feeds train over a 1-D mesh of local devices
(``data_parallel_devices``): parameters and optimizer state replicated, each batch split on the
batch axis (``NamedSharding``); the compiler all-reduces the gradients. The noise of the
reparameterization is drawn for the global batch (threefry is partitionable), so the result
equals one device's up to float summation order. A batch whose size the devices do not divide
(the epoch's last, smaller batch) runs replicated on every device: the same result, no speed-up.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvae import validation
from jaxvae.training import distributed as multihost
from jaxvae.training import feeding
from jaxvae.training.parallel import AXIS, make_mesh

# Steps per compiled call when batches come from the host: a group is gathered and sent while
# the previous one trains.
HOST_GROUP_STEPS = 4
HOST_PREFETCH_GROUPS = 2


def data_parallel_devices(batch_size: int, num_devices: int | None = None) -> list:
    """The local devices a batch of ``batch_size`` is split over.

    ``num_devices`` (None: all local devices) is an upper bound: the count used is the largest
    one not above it that divides ``batch_size``, so that every device gets an equal share
    (e.g. batch 100 on 8 devices trains on 5).
    """
    local = jax.local_devices()
    if num_devices is None:
        num_devices = len(local)
    validation.check_count(num_devices, "num_devices")
    if num_devices > len(local):
        raise ValueError(f"num_devices {num_devices} is more than the {len(local)} local "
                         f"devices ({local[0].platform}); use --num-devices <= {len(local)}")
    count = max(d for d in range(1, num_devices + 1) if batch_size % d == 0)
    return local[:count]


class Piece(NamedTuple):
    """The arguments of one ``make_train_chunk`` call: S steps."""

    data: Any  # the in-memory data, or None when ``items`` are the batches
    items: Any  # example indices (S, B) or batches (S, B, ...)
    positions: jax.Array  # int32 (S,): the steps' positions in the epoch
    batch_sharding: Any  # the batch layout over the mesh (static), or None
    sizes: list  # the S batch sizes (examples per step, over all processes)


class _Feed:
    """What the three feeds share: the mesh, the epoch's order, state placement."""

    def __init__(self, batch_size: int, num_examples: int, devices: list, shuffle_key):
        self.batch_size = batch_size
        self.num_examples = num_examples
        self.devices = devices
        self.mesh = make_mesh(devices)
        self.replicated = NamedSharding(self.mesh, P())
        self.shuffle_key = shuffle_key
        self._perm_epoch, self._perm = None, None

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def permutation(self, epoch: int) -> np.ndarray:
        """The epoch's example order (cached for the epoch's chunks)."""
        if self._perm_epoch != epoch:
            self._perm = feeding.epoch_permutation(jax.random.fold_in(self.shuffle_key, epoch),
                                                   self.num_examples)
            self._perm_epoch = epoch
        return self._perm

    def split(self, size: int):
        """The sharding of a (S, size, ...) batch stack: split if the devices divide size."""
        if self.num_devices > 1 and size % self.num_devices == 0:
            return NamedSharding(self.mesh, P(None, AXIS))
        return self.replicated

    def index_piece(self, data: Any, idx_SxB: np.ndarray, start: int) -> Piece:
        """Steps ``start ..`` on the rows ``idx_SxB`` of ``data`` (already on the devices),
        gathered inside the compiled chunk."""
        size = idx_SxB.shape[1]
        sharding = self.split(size)
        items = jax.device_put(idx_SxB.astype(np.int32), sharding)
        positions = jax.device_put(np.arange(start, start + len(idx_SxB), dtype=np.int32),
                                   self.replicated)
        batch = None if sharding is self.replicated else NamedSharding(self.mesh, P(AXIS))
        return Piece(data, items, positions, batch, [size] * len(idx_SxB))

    def place_state(self, tree: Any) -> Any:
        """The train state (or any pytree) replicated over the mesh."""
        return jax.device_put(tree, self.replicated)

    def to_host(self, tree: Any) -> Any:
        return tree

    def place_eval(self, data: Any) -> Any:
        """Evaluation data, placed where the evaluation runs with the state's parameters."""
        return jax.device_put(data, self.replicated)


class DeviceFeed(_Feed):
    """All training data on the devices (replicated); batches gathered by index inside a chunk.

    The epoch: ``N // B`` full batches, then one smaller batch with the remainder.
    """

    def __init__(self, data: Any, batch_size: int, shuffle_key, devices: list):
        n = len(jax.tree.leaves(data)[0])
        super().__init__(batch_size, n, devices, shuffle_key)
        self.data = jax.device_put(data, self.replicated)
        self.num_full, self.remainder = divmod(n, batch_size)
        self.steps_per_epoch = self.num_full + (self.remainder > 0)

    def pieces(self, epoch: int, start: int, stop: int) -> Iterator[Piece]:
        perm, b = self.permutation(epoch), self.batch_size
        full_stop = min(stop, self.num_full)
        if full_stop > start:
            idx = perm[start * b:full_stop * b].reshape(full_stop - start, b)
            yield self.index_piece(self.data, idx, start)
        if self.remainder and stop == self.steps_per_epoch:
            yield self.index_piece(self.data, perm[self.num_full * b:][None], self.num_full)


# Steps per compiled call of a bucket's full batches (the groups of all buckets interleave).
BUCKET_GROUP_STEPS = 16


def bucket_bounds(lengths_N: np.ndarray, num_buckets: int) -> tuple[int, ...]:
    """The rising row lengths that split examples of ``lengths_N`` into at most
    ``num_buckets`` buckets with the fewest padded positions: each example is cut to the bound
    of the first bucket that holds it, and the bounds minimise sum_i bound(i) (an exact dynamic
    programme over the distinct lengths). The last bound is the longest row.

    Examples:
      >>> bucket_bounds(np.array([3, 4, 5, 6, 7, 8, 9, 30]), 2)  # 7 rows cut to 9, one to 30
      (9, 30)
    """
    validation.check_count(num_buckets, "num_buckets")
    values_U, counts_U = np.unique(np.asarray(lengths_N), return_counts=True)
    before_U = np.concatenate([[0], np.cumsum(counts_U)[:-1]])  # rows shorter than values[u]
    through_U = np.cumsum(counts_U)  # rows up to values[u]
    num = len(values_U)
    # cost[k, u]: the fewest positions for the rows up to values[u] in k + 1 buckets, the last
    # ending at values[u]; start[k, u]: where that last bucket starts
    cost = np.full((num_buckets, num), np.inf)
    start = np.zeros((num_buckets, num), np.int64)
    cost[0] = values_U * through_U
    for k in range(1, num_buckets):
        for u in range(k, num):
            a = np.arange(k, u + 1)  # the last bucket holds values[a .. u]
            total = cost[k - 1, a - 1] + values_U[u] * (through_U[u] - before_U[a])
            best = int(np.argmin(total))
            cost[k, u], start[k, u] = total[best], a[best]
    k, u, bounds = int(np.argmin(cost[:, -1])), num - 1, []
    while True:
        bounds.append(int(values_U[u]))
        if k == 0:
            return tuple(reversed(bounds))
        u, k = int(start[k, u]) - 1, k - 1


def bucket_members(lengths_N: np.ndarray, bounds: tuple[int, ...]) -> list[np.ndarray]:
    """Each bucket's example indices: example i belongs to the first bucket whose bound is at
    least ``lengths_N[i]``."""
    bucket_N = np.searchsorted(np.asarray(bounds), np.asarray(lengths_N))
    return [np.flatnonzero(bucket_N == k) for k in range(len(bounds))]


def bucket_steps(members: list[np.ndarray], batch_size: int) -> int:
    """The steps of a ``bucket_plan`` epoch: each bucket's full batches and smaller last one."""
    return sum(-(-len(m) // batch_size) for m in members)


def bucket_plan(members: list[np.ndarray], batch_size: int, key: jax.Array
                ) -> list[tuple[int, np.ndarray]]:
    """An epoch of length-bucketed batches: ``[(bucket, example indices (S, B_s)), ...]``.

    Each bucket's examples (``bucket_members``) are shuffled (``fold_in(key, k)``) and cut into
    full batches, in groups of ``BUCKET_GROUP_STEPS``, and one smaller last batch; the groups of
    every bucket run in a shuffled order (``key``), the smaller batches after them. Every example
    is in exactly one batch.
    """
    groups, last = [], []
    for k, bucket in enumerate(members):
        if not len(bucket):
            continue
        bucket = bucket[feeding.epoch_permutation(jax.random.fold_in(key, k), len(bucket))]
        num_full = len(bucket) // batch_size
        full = bucket[:num_full * batch_size].reshape(num_full, batch_size)
        groups += [(k, full[g:g + BUCKET_GROUP_STEPS])
                   for g in range(0, num_full, BUCKET_GROUP_STEPS)]
        if len(bucket) % batch_size:
            last.append((k, bucket[num_full * batch_size:][None]))
    order = feeding.epoch_permutation(key, len(groups)) if groups else []
    return [groups[i] for i in order] + last


class BucketFeed(_Feed):
    """Rows of token ids, padded at the end, trained in buckets of similar length: each batch
    is cut to its bucket's bound, so a step's cost follows the lengths of its rows instead of the
    longest row of the data set (a model whose loss does not change with padding, like the
    sequence VAE, trains on the same examples with the same loss, faster).

    The data is on the devices as in ``DeviceFeed``, one copy per bucket holding that bucket's
    examples cut to its bound (arrays of two or more axes are cut on axis 1). The epoch is
    ``bucket_plan(members, B, fold_in(shuffle_key, epoch))``; each group of a bucket's
    batches is one compiled call (one program per bucket and group size).
    """

    def __init__(self, data: Any, batch_size: int, shuffle_key, devices: list,
                 lengths_N: np.ndarray, bounds: tuple[int, ...]):
        n = len(jax.tree.leaves(data)[0])
        super().__init__(batch_size, n, devices, shuffle_key)
        self.lengths_N = np.asarray(lengths_N)
        if self.lengths_N.shape != (n,):
            raise ValueError(f"lengths must hold one length per training example ({n}), got "
                             f"shape {self.lengths_N.shape}")
        self.bounds = tuple(int(b) for b in bounds)
        rising = list(self.bounds) == sorted(set(self.bounds))
        if not rising or self.bounds[-1] < self.lengths_N.max():
            raise ValueError(f"bucket bounds must rise and reach the longest row "
                             f"({int(self.lengths_N.max())}), got {self.bounds}")
        # each bucket's rows (data row i of bucket k is example members[k][i])
        self.members = bucket_members(self.lengths_N, self.bounds)
        self.row_N = np.zeros(n, np.int64)  # example index -> its row in its bucket's copy
        for members in self.members:
            self.row_N[members] = np.arange(len(members))

        def cut(a, k):
            a = np.asarray(a)[self.members[k]]
            return a[:, :self.bounds[k]] if a.ndim >= 2 else a

        self.data = [jax.device_put(jax.tree.map(lambda a: cut(a, k), data), self.replicated)
                     for k in range(len(self.bounds))]
        self.steps_per_epoch = bucket_steps(self.members, batch_size)
        self._plan_epoch, self._plan = None, None

    def permutation(self, epoch: int) -> list:
        """The epoch's plan (``bucket_plan``; cached for the epoch's chunks)."""
        if self._plan_epoch != epoch:
            self._plan = bucket_plan(self.members, self.batch_size,
                                     jax.random.fold_in(self.shuffle_key, epoch))
            self._plan_epoch = epoch
        return self._plan

    def pieces(self, epoch: int, start: int, stop: int) -> Iterator[Piece]:
        position = 0
        for k, idx_SxB in self.permutation(epoch):
            lo, hi = max(start, position), min(stop, position + len(idx_SxB))
            if lo < hi:
                rows = self.row_N[idx_SxB[lo - position:hi - position]]
                yield self.index_piece(self.data[k], rows, lo)
            position += len(idx_SxB)


class HostFeed(_Feed):
    """Training data in host memory: batches gathered on the host, prefetched to the devices.

    The same epoch as ``DeviceFeed`` (same order, same batches); the steps run in groups of
    ``HOST_GROUP_STEPS`` at fixed epoch positions, so a resumed run repeats the same calls.
    """

    def __init__(self, data: Any, batch_size: int, shuffle_key, devices: list):
        n = len(jax.tree.leaves(data)[0])
        super().__init__(batch_size, n, devices, shuffle_key)
        self.data = data
        self.steps_per_epoch = math.ceil(n / batch_size)

    def pieces(self, epoch: int, start: int, stop: int) -> Iterator[Piece]:
        perm, b = self.permutation(epoch), self.batch_size
        num_full = self.num_examples // b

        def groups():
            position = start
            while position < stop:
                end = min(stop, (position // HOST_GROUP_STEPS + 1) * HOST_GROUP_STEPS)
                if position < num_full:
                    end = min(end, num_full)  # the smaller last batch is its own group
                idx = [perm[i * b:(i + 1) * b] for i in range(position, end)]
                yield position, np.stack(idx)
                position = end

        queue: collections.deque = collections.deque()
        for position, idx_SxB in groups():
            size = idx_SxB.shape[1]
            sharding = self.split(size)
            batches = jax.tree.map(lambda a: jax.device_put(np.asarray(a[idx_SxB]), sharding),
                                   self.data)
            positions = jax.device_put(np.arange(position, position + len(idx_SxB),
                                                 dtype=np.int32), self.replicated)
            batch = None if sharding is self.replicated else NamedSharding(self.mesh, P(AXIS))
            queue.append(Piece(None, batches, positions, batch, [size] * len(idx_SxB)))
            if len(queue) > HOST_PREFETCH_GROUPS:
                yield queue.popleft()
        yield from queue


class ProcessFeed(_Feed):
    """Several processes, each holding its own block of the training examples.

    Step t's global batch of B examples is the concatenation, in process order, of each
    process's rows ``t*b .. (t+1)*b - 1`` of its own permutation
    ``permutation(fold_in(shuffle_key, epoch), N_p)`` (b = B / P, the local batch). An epoch is
    the same number of steps on every process, ``min_p N_p // b`` (the last, partial batches
    are dropped, as a DataLoader with drop_last=True does). The mesh spans every process's
    devices; parameters are replicated over it.
    """

    def __init__(self, local_data: Any, batch_size: int, shuffle_key):
        from jax.experimental import multihost_utils

        count = jax.process_count()
        if batch_size % count:
            raise ValueError(f"batch size {batch_size} does not split evenly over {count} "
                             f"processes: use a multiple of {count}")
        self.local_batch = batch_size // count
        if self.local_batch % jax.local_device_count():
            raise ValueError(f"batch size {batch_size} does not split evenly over "
                             f"{jax.device_count()} devices: use a multiple of "
                             f"{jax.device_count()}")
        num_local = len(jax.tree.leaves(local_data)[0])
        super().__init__(batch_size, num_local, jax.devices(), shuffle_key)
        self.data = local_data
        counts = np.asarray(multihost_utils.process_allgather(np.asarray(num_local, np.int32)))
        self.steps_per_epoch = int(counts.min()) // self.local_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"a process holds only {int(counts.min())} training examples, "
                             f"fewer than its share {self.local_batch} of the batch "
                             f"{batch_size}: use a smaller --batch-size or fewer processes")

    def pieces(self, epoch: int, start: int, stop: int) -> Iterator[Piece]:
        idx = multihost.local_batch_indices(self.num_examples,
                                            jax.random.fold_in(self.shuffle_key, epoch),
                                            self.local_batch, start, stop)
        sharding = NamedSharding(self.mesh, P(None, AXIS))
        batches = jax.tree.map(
            lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)[idx]),
            self.data)
        positions = self.place_state(np.arange(start, stop, dtype=np.int32))
        yield Piece(None, batches, positions, NamedSharding(self.mesh, P(AXIS)),
                    [self.batch_size] * (stop - start))

    def place_state(self, tree: Any) -> Any:
        """Host values (the same on every process) as arrays replicated over the global mesh."""
        def put(a):
            a = np.asarray(a)
            return jax.make_array_from_callback(a.shape, self.replicated, lambda i: a[i])
        return jax.tree.map(put, self.to_host(tree))

    def to_host(self, tree: Any) -> Any:
        """Numpy values of replicated global arrays (every process holds a full copy)."""
        def get(a):
            if isinstance(a, jax.Array) and not a.is_fully_addressable:
                a = a.addressable_data(0)
            return np.asarray(a)
        return jax.tree.map(get, tree)

    def place_eval(self, data: Any) -> Any:
        return jax.device_put(data, jax.local_devices()[0])


def run_key_for(feed: _Feed, run_key: jax.Array) -> jax.Array:
    """The run key as the chunk takes it on this feed's devices (raw key data, replicated)."""
    return feed.place_state(jax.random.key_data(run_key))
