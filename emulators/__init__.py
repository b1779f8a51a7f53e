"""turnup."""
