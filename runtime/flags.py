"""The two words of process state that generated CPU code reads.

* ``spcomp_interrupt``: set while the main thread stops a long call after Ctrl-C
  (interrupt.py); each kernel's outer loops poll it (``PollInterrupt``).
* ``spcomp_forked``: set in a child made by ``os.fork()`` (forksafe.py); the
  native parallel driver then runs its chunks on the calling thread instead of
  calling libgomp, which is not fork-safe.

They live here, in a module that imports nothing of spcomp, so that the CPU
backend can hand their addresses to the JIT without depending on the runtime's
call machinery.
"""
from __future__ import annotations

import ctypes

INTERRUPT_SYMBOL = "spcomp_interrupt"
FORKED_SYMBOL = "spcomp_forked"

interrupt = ctypes.c_int32(0)  # read by generated code with an atomic load
forked = ctypes.c_int32(0)     # 1 in a forked child (and its children)


def symbols() -> dict:
    """Symbol name -> address of each word, for the JIT's symbol table."""
    return {INTERRUPT_SYMBOL: ctypes.addressof(interrupt), FORKED_SYMBOL: ctypes.addressof(forked)}
