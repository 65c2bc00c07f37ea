"""Numba kernels that build perturbation batches (public wrappers validate and allocate)."""
