"""mskjax: Modified Spectrum Kernels for wide networks in JAX."""
__version__ = "0.1.0"
__all__ = []
