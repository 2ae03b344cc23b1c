"""jdl: a JAX functional training framework."""
