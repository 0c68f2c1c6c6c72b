"""The GANs of the low-resolution (64x64) MI protocol: GMI's and KEDMI's networks and objectives."""
