"""deepvibe: a hybrid variational autoencoder for content-aware music discovery."""

__version__ = "0.1.0"
