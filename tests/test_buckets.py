"""Length buckets: rows of token ids trained in batches of similar length, each cut to its
bucket's bound (``placement.BucketFeed``, ``SequenceConfig.length_buckets``)."""

import itertools

import jax
import numpy as np
import pytest

from jaxvae.data.vocab import PAD_ID
from jaxvae.training import loop, placement


def _padded_positions(lengths, bounds):
    bounds = np.asarray(bounds)
    return int(bounds[np.searchsorted(bounds, lengths)].sum())


def test_bucket_bounds_pad_the_fewest_positions():
    """Against every choice of at most K bounds among the lengths (brute force)."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        lengths = rng.integers(1, 12, rng.integers(1, 25))
        k = int(rng.integers(1, 5))
        bounds = placement.bucket_bounds(lengths, k)
        values = np.unique(lengths)
        best = min(_padded_positions(lengths, sorted(set(c) | {values[-1]}))
                   for r in range(k) for c in itertools.combinations(values[:-1], r))
        assert len(bounds) <= k and bounds[-1] == lengths.max()
        assert list(bounds) == sorted(set(bounds))
        assert _padded_positions(lengths, bounds) == best
    assert placement.bucket_bounds(np.array([5, 5, 5]), 3) == (5,)


def test_an_epoch_plan_holds_every_example_once_in_batches_of_its_bucket():
    rng = np.random.default_rng(1)
    lengths = rng.integers(2, 30, 1000)
    bounds, batch = placement.bucket_bounds(lengths, 4), 32
    members = placement.bucket_members(lengths, bounds)
    plan = placement.bucket_plan(members, batch, jax.random.key(3))
    assert len(plan) and all(len(idx) <= placement.BUCKET_GROUP_STEPS for _, idx in plan)
    steps = sum(len(idx) for _, idx in plan)
    assert steps == placement.bucket_steps(members, batch)
    seen = np.concatenate([idx.ravel() for _, idx in plan])
    assert np.array_equal(np.sort(seen), np.arange(1000))
    lower = (0,) + bounds[:-1]
    for k, idx in plan:
        assert np.all((lengths[idx] > lower[k]) & (lengths[idx] <= bounds[k]))
    # full batches of B, each bucket's smaller last batch at the end of the epoch
    sizes = [idx.shape[1] for _, idx in plan]
    tail = [s for s in sizes if s != batch]
    assert sizes[len(sizes) - len(tail):] == tail and len(tail) <= len(bounds)
    again = placement.bucket_plan(members, batch, jax.random.key(3))
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(plan, again))
    other = placement.bucket_plan(members, batch, jax.random.key(4))
    assert not np.array_equal(seen, np.concatenate([idx.ravel() for _, idx in other]))


@pytest.mark.parametrize("start, stop", [(0, None), (5, 23), (16, 17)])
def test_the_feed_hands_each_step_its_planned_rows_cut_to_the_bucket(start, stop):
    """Any range of steps (a chunk that ends at a checkpoint position) gets, step by step,
    the planned examples' rows cut to their bucket's bound, and nothing is lost by the cut."""
    rng = np.random.default_rng(2)
    lengths = rng.integers(2, 20, 300)
    x = np.full((300, 24), PAD_ID, np.int32)
    for i, n in enumerate(lengths):
        x[i, :n] = rng.integers(4, 30, n)
    bounds = placement.bucket_bounds(lengths, 3)
    feed = placement.BucketFeed({"x": x}, 8, jax.random.key(0), jax.local_devices()[:2],
                                lengths, bounds)
    stop = feed.steps_per_epoch if stop is None else stop
    plan = [(k, row) for k, idx in feed.permutation(1) for row in idx]
    position = start
    for piece in feed.pieces(1, start, stop):
        rows = np.asarray(jax.device_get(piece.data["x"]))[np.asarray(piece.items)]
        assert np.array_equal(np.asarray(piece.positions),
                              np.arange(position, position + len(rows)))
        for s, batch in enumerate(rows):
            k, idx = plan[position + s]
            assert batch.shape[1] == bounds[k]
            assert np.array_equal(batch, x[idx, :bounds[k]])
            assert np.all(x[idx, bounds[k]:] == PAD_ID)
        position += len(rows)
    assert position == stop


def test_buckets_are_refused_without_lengths_or_off_the_devices():
    x = np.zeros((10, 5), np.int32)
    with pytest.raises(ValueError, match="length buckets need the rows' lengths"):
        loop.TrainingData({"x": x}, bucket_bounds=(5,))
    with pytest.raises(ValueError, match="length buckets need the rows' lengths"):
        loop.TrainingData({"x": x}, lengths=np.full(10, 5), bucket_bounds=(5,), stream=True)
    with pytest.raises(ValueError, match="bucket bounds must rise and reach the longest row"):
        placement.BucketFeed({"x": x}, 2, jax.random.key(0), jax.local_devices()[:1],
                             np.full(10, 5), (3,))

