"""shine_jax: SHINE hypernetworks in JAX."""
