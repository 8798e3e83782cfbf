"""gvae-dist: distributed Gated-VAE training."""

__version__ = "0.1.0"
