"""Apply a plan to a module: validate, stage, commit. The model changes completely, or not at all.

1. **Validate** (:mod:`~weightsurgery.apply.validate`) the whole plan against
   the checkpoint and the target from metadata, and every target tensor that
   will be written (dense, strided, no ``expand()``ed memory). Every plan
   problem is collected and raised once, before anything is read.
2. **Stage** (:mod:`~weightsurgery.apply.stage`). Read each source tensor,
   check it (not sparse, not ``meta``...), adapt it, cast it to the target's
   dtype, on the host whatever the target's device (:mod:`weightsurgery._device`), and compute the fallback init for the leftovers (a
   leftover no rule names keeps its constructor's values: nothing is computed
   for it, or on a factory-built target, the constructor's values are). The
   module is not touched, so any error here leaves it bit-for-bit unchanged.
   Target tensors that overlap are checked to end up with the values the
   report claims (:mod:`weightsurgery._memory`).
3. **Commit** (:mod:`~weightsurgery.apply.commit`). Copy the staged tensors in
   place (``copy_`` under ``no_grad``; into a CUDA tensor through page-locked
   memory, one tensor at a time, with the undo copy on the host), or, for tensors on the ``meta`` device
   (a factory-built target), put them in as new parameters; then module extra
   state (:mod:`weightsurgery.extra_state`), then ``freeze``. Each change is
   recorded with its undo first: an interrupt or error in the middle, Ctrl-C
   included, undoes them all, parameter objects and ``requires_grad`` included.

``load_state_dict`` is never called: it costs about 150 µs per key and grows
quadratically on wide models. Staged tensors never alias a memory-mapped file:
a tensor that will train must own its memory.
"""

from weightsurgery.apply.run import ApplyResult as ApplyResult
from weightsurgery.apply.run import apply_plan as apply_plan
from weightsurgery.apply.validate import complete_plan as complete_plan
from weightsurgery.apply.validate import validate_plan as validate_plan

__all__ = ["ApplyResult", "apply_plan", "complete_plan", "validate_plan"]
