"""Neural-network building blocks: Module/Parameter, layers, losses, model builders.

``ml.nn.mlp([784, 128, 10])`` builds the article's MLP; ``ml.nn.functional`` holds the losses.
"""

from . import functional
from .layers import Linear, ReLU, Sequential, Sigmoid, Tanh
from .models import logistic_regression, mlp
from .module import Module, Parameter, StateDictError

__all__ = [
           "Linear",
           "Module",
           "Parameter",
           "ReLU",
           "Sequential",
           "Sigmoid",
           "StateDictError",
           "Tanh",
           "functional",
           "logistic_regression",
           "mlp",
]
