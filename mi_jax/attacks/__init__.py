"""Model-inversion attacks. PPA (Plug & Play Attacks) with a StyleGAN2 prior: see ppa.py."""
