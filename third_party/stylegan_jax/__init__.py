"""StyleGAN2(-ADA) in JAX/Flax: generator, discriminator, training losses, NVIDIA pickle import.

config, variables, _ = checkpoint.load_generator('generators/ffhq')
G = networks.Generator(config)
ws = G.apply(variables, z, truncation_psi=0.5, truncation_cutoff=8, method=G.map)
img = G.apply(variables, ws, noise_mode='const', method=G.synthesize)   # [N, R, R, C] in [-1, 1]
"""

from .checkpoint import load_generator, save_generator
from .networks import Discriminator, Generator, GeneratorConfig

__all__ = ['Discriminator', 'Generator', 'GeneratorConfig', 'load_generator', 'save_generator']
