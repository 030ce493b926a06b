"""Host memory that compiling freed, handed back to the system before training runs.

glibc's malloc arenas keep freed memory for reuse and return little of it by themselves.
Compiling the CIFAR-10 train step on the CPU left over half a GiB there, and the first
step's buffers came on top of it: the process peaked in that step. Compiling ahead of the first
step and trimming then (run/build.py: compiled_train_step) lowered the command line's
peak by 19-23% (experiments/README.md, "Host memory against the peer"). Elsewhere than
glibc nothing happens.
"""

import ctypes
import platform


def release_freed() -> bool:
  """Returns the free memory of malloc's arenas to the system; whether any was."""
  if platform.libc_ver()[0] != "glibc":
    return False
  try:
    return bool(ctypes.CDLL(None).malloc_trim(0))
  except (OSError, AttributeError):
    return False
