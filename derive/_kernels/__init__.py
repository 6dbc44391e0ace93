"""Compiled kernels of the shipped cells, built by setup.py when derive is installed.

One extension module per cell (`derive._kernels.lstm`, ...), each holding the float32
and float64 kernels. `derive.kernel.build` decides whether a module here is current; the
runtime loads kernels through `derive.load_kernel`, never from here directly.
"""
