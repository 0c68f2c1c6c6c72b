"""mi_jax: model-inversion attacks and skip-connection defenses in JAX/Flax."""
