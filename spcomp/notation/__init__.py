"""Index notation (typed expression trees) and the helpers that walk them."""
from . import chains
from .functions import FUNCTIONS, Function, maps_zero_to_zero
from .nodes import (Access, Add, Assignment, Call, Div, IndexVar,
                    Literal, Mul, Neg, Sub, Sum, TensorVar, accesses, children,
                    free_indices, with_children)
