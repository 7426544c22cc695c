"""Objectives: loss factories ``make_*_loss -> loss_fn(params, batch, key, step)`` and KL schedules."""
