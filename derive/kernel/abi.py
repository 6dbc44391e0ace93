"""The calling convention between generated kernel modules and `derive.kernel.runtime`.

A generated module records the `KERNEL_API` it was written for; the runtime uses a
module only when the numbers agree (and the build cache keys on it).
"""

#: version of the calling convention between generated modules and the runtime
KERNEL_API = 4
