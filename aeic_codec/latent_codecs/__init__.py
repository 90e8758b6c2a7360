"""Latent codecs: a latent and its side streams to bytes and back, float or integer path."""
