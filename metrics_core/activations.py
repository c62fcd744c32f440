"""Elementwise activations: forward, numerically careful derivative, and linear pieces."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_DEFAULT_PARAMS: dict[str, dict[str, float]] = {
    "relu": {},
    "leaky_relu": {"negative_slope": 0.01},
    "hard_tanh": {"min_val": -1.0, "max_val": 1.0},
    "relu6": {},
    "tanh": {},
    "sigmoid": {},
}
_PIECES = {"relu": 2, "leaky_relu": 2, "hard_tanh": 3, "relu6": 3}

ACTIVATION_NAMES = tuple(_DEFAULT_PARAMS)
PIECEWISE_LINEAR_NAMES = tuple(_PIECES)


@dataclass(frozen=True)
class Activation:
    """One elementwise nonlinearity with its parameters (e.g. the leaky slope).

    `params` may be given as a mapping; it is stored as sorted (name, value) pairs with the
    defaults filled in, so equal activations compare and hash equal.
    """

    name: str
    params: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in _DEFAULT_PARAMS:
            raise ValueError(
                f"unknown activation {self.name!r}; supported: {', '.join(ACTIVATION_NAMES)}"
            )
        given = dict(self.params.items() if isinstance(self.params, Mapping) else self.params)
        allowed = _DEFAULT_PARAMS[self.name]
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise ValueError(
                f"activation {self.name!r} takes parameters {sorted(allowed) or 'none'}, "
                f"got unknown {unknown}"
            )
        merged = {**allowed, **{key: float(value) for key, value in given.items()}}
        if self.name == "hard_tanh" and not merged["min_val"] < merged["max_val"]:
            raise ValueError(f"hard_tanh needs min_val < max_val, got {merged}")
        object.__setattr__(self, "params", tuple(sorted(merged.items())))

    @property
    def params_dict(self) -> dict[str, float]:
        return dict(self.params)

    @property
    def piecewise_linear(self) -> bool:
        return self.name in _PIECES

    @property
    def num_pieces(self) -> int:
        """Linear pieces per unit (2 or 3); raises for smooth activations."""
        self.require_piecewise_linear("linear pieces")
        return _PIECES[self.name]

    @property
    def thresholds(self) -> tuple[float, ...]:
        """Pre-activation values where the piece changes: (0,) for relu and leaky_relu, the
        lower and upper bound for hard_tanh and relu6; raises for smooth activations."""
        self.require_piecewise_linear("piece thresholds")
        return (0.0,) if self.name in ("relu", "leaky_relu") else self._bounds()

    def _bounds(self) -> tuple[float, float]:
        if self.name == "relu6":
            return 0.0, 6.0
        p = self.params_dict
        return p["min_val"], p["max_val"]

    def require_piecewise_linear(self, what: str) -> None:
        """Raise a ValueError naming `what` for smooth activations."""
        if not self.piecewise_linear:
            raise ValueError(
                f"{what} are defined only for piecewise-linear activations "
                f"({', '.join(PIECEWISE_LINEAR_NAMES)}), not {self.name!r}"
            )

    def forward(self, h: Tensor, *, inplace: bool = False) -> Tensor:
        if self.name == "relu":
            return torch.relu_(h) if inplace else torch.relu(h)
        if self.name == "leaky_relu":
            return F.leaky_relu(h, self.params_dict["negative_slope"], inplace=inplace)
        if self.name in ("hard_tanh", "relu6"):
            low, high = self._bounds()
            return F.hardtanh(h, low, high, inplace=inplace)
        if self.name == "tanh":
            return torch.tanh_(h) if inplace else torch.tanh(h)
        return torch.sigmoid_(h) if inplace else torch.sigmoid(h)

    def derivative(self, h: Tensor) -> Tensor:
        """σ'(h), accurate where the activation saturates.

        tanh' is 4e^{-2|h|}/(1+e^{-2|h|})² rather than 1 − tanh², which is 0 in float32 for
        |h| > 9; sigmoid' is s(h)·s(−h) rather than s(1 − s). At piece boundaries the
        derivative follows PyTorch's autograd (relu'(0) = 0, hardtanh' = 0 at its bounds).
        """
        if self.name == "relu":
            return (h > 0).to(h.dtype)
        if self.name == "leaky_relu":
            slope = h.new_tensor(self.params_dict["negative_slope"])
            return torch.where(h > 0, h.new_ones(()), slope)
        if self.name in ("hard_tanh", "relu6"):
            low, high = self._bounds()
            return ((h > low) & (h < high)).to(h.dtype)
        if self.name == "tanh":
            e = torch.exp(-2.0 * h.abs())
            return 4.0 * e / (1.0 + e) ** 2
        return torch.sigmoid(h) * torch.sigmoid(-h)

    def with_exact_grad(self, h: Tensor) -> Tensor:
        """forward(h), differentiated by `derivative`: autograd's own tanh' and sigmoid' (from the
        output, 1 − y² and y(1 − y)) lose their digits as the unit saturates and are 0 beyond it."""
        if self.piecewise_linear or not (h.requires_grad and torch.is_grad_enabled()):
            return self.forward(h)
        return _ExactGrad.apply(h, self)

    def pieces(self, h: Tensor) -> Tensor:
        """int8 piece index per unit: relu/leaky_relu 1 iff h > 0; hard_tanh/relu6 0 at or
        below the lower bound, 1 strictly inside, 2 at or above the upper bound (the same
        convention as `derivative`)."""
        self.require_piecewise_linear("linear-region codes")
        # Reinterpreting the bool bytes skips a converting pass over the largest tensors we make.
        if self.name in ("relu", "leaky_relu"):
            return (h > 0).view(torch.int8)
        low, high = self._bounds()
        return (h > low).view(torch.int8) + (h >= high).view(torch.int8)

    def module(self) -> nn.Module:
        p = self.params_dict
        if self.name == "relu":
            return nn.ReLU()
        if self.name == "leaky_relu":
            return nn.LeakyReLU(p["negative_slope"])
        if self.name == "hard_tanh":
            return nn.Hardtanh(p["min_val"], p["max_val"])
        if self.name == "relu6":
            return nn.ReLU6()
        if self.name == "tanh":
            return nn.Tanh()
        return nn.Sigmoid()

    @classmethod
    def from_module(cls, module: nn.Module) -> Activation:
        """The activation of a PyTorch module; raises ValueError for unsupported modules."""
        # ReLU6 subclasses Hardtanh, so it must be matched first.
        if isinstance(module, nn.ReLU6):
            return cls("relu6")
        if isinstance(module, nn.ReLU):
            return cls("relu")
        if isinstance(module, nn.LeakyReLU):
            return cls("leaky_relu", {"negative_slope": module.negative_slope})
        if isinstance(module, nn.Hardtanh):
            return cls("hard_tanh", {"min_val": module.min_val, "max_val": module.max_val})
        if isinstance(module, nn.Tanh):
            return cls("tanh")
        if isinstance(module, nn.Sigmoid):
            return cls("sigmoid")
        raise ValueError(
            f"unsupported module {type(module).__name__}: activations must be one of "
            "ReLU, LeakyReLU, Hardtanh, ReLU6, Tanh, Sigmoid"
        )


class _ExactGrad(torch.autograd.Function):
    generate_vmap_rule = True  # composes with torch.func's vmap, jacrev, jacfwd and hessian

    @staticmethod
    def forward(h: Tensor, activation: Activation) -> Tensor:
        return activation.forward(h)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        h, activation = inputs
        ctx.save_for_backward(h)
        ctx.save_for_forward(h)
        ctx.activation = activation

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (h,) = ctx.saved_tensors
        return grad * ctx.activation.derivative(h), None

    @staticmethod
    def jvp(ctx, tangent: Tensor, _) -> Tensor:
        (h,) = ctx.saved_tensors
        return tangent * ctx.activation.derivative(h)
