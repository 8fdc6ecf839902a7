"""Fallback init for the target tensors a transfer could not load.

* :mod:`~weightsurgery.init.specs`: specs that mirror :mod:`torch.nn.init`.
* :mod:`~weightsurgery.init.spec_base`: what every spec shares (describe, signature, check).
* :mod:`~weightsurgery.init.parse`: ``"trunc_normal(std=0.02)"`` -> spec, safely.
* :mod:`~weightsurgery.init.rules`: pick a spec per key by glob, regex or module type.
* :mod:`~weightsurgery.init.engine`: compute the new tensors, seeded, without
  touching the module; leftovers no rule names keep their constructor's values.

Example:
    >>> from torch import nn
    >>> from weightsurgery.match.target import TargetSpec
    >>> model = nn.Linear(3, 2)
    >>> res = compute_init(model, TargetSpec.from_module(model), ["bias"], InitRules.from_user("zeros"), seed=0)
    >>> res.tensors["bias"].tolist(), res.rules["bias"]
    ([0.0, 0.0], '*')
"""

from weightsurgery.init.callables import CallableSpec as CallableSpec
from weightsurgery.init.engine import CONSTRUCTOR as CONSTRUCTOR
from weightsurgery.init.engine import InitResult as InitResult
from weightsurgery.init.engine import compute_init as compute_init
from weightsurgery.init.parse import SpecLike as SpecLike
from weightsurgery.init.parse import parse_spec as parse_spec
from weightsurgery.init.parse import valid_specs as valid_specs
from weightsurgery.init.rules import InitRule as InitRule
from weightsurgery.init.rules import InitRules as InitRules
from weightsurgery.init.specs import SPECS as SPECS
from weightsurgery.init.specs import Constant as Constant
from weightsurgery.init.specs import Default as Default
from weightsurgery.init.specs import Keep as Keep
from weightsurgery.init.specs import InitSpec as InitSpec
from weightsurgery.init.specs import KaimingNormal as KaimingNormal
from weightsurgery.init.specs import KaimingUniform as KaimingUniform
from weightsurgery.init.specs import Normal as Normal
from weightsurgery.init.specs import Ones as Ones
from weightsurgery.init.specs import Orthogonal as Orthogonal
from weightsurgery.init.specs import Reset as Reset
from weightsurgery.init.specs import TensorInit as TensorInit
from weightsurgery.init.specs import TruncNormal as TruncNormal
from weightsurgery.init.specs import Uniform as Uniform
from weightsurgery.init.specs import XavierNormal as XavierNormal
from weightsurgery.init.specs import XavierUniform as XavierUniform
from weightsurgery.init.specs import Zeros as Zeros

__all__ = [
    "CONSTRUCTOR",
    "SPECS",
    "CallableSpec",
    "Constant",
    "Default",
    "InitResult",
    "InitRule",
    "InitRules",
    "InitSpec",
    "Keep",
    "KaimingNormal",
    "KaimingUniform",
    "Normal",
    "Ones",
    "Orthogonal",
    "Reset",
    "SpecLike",
    "TensorInit",
    "TruncNormal",
    "Uniform",
    "XavierNormal",
    "XavierUniform",
    "Zeros",
    "compute_init",
    "parse_spec",
    "valid_specs",
]
