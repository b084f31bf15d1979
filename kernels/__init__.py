"""Triton kernels, installed as ``mads_fast.kernels`` (one file per op)."""
