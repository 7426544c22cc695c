"""Evaluation: importance-sampled log-likelihood and ELBO, latent views, repair, plots."""
