"""Network bodies shared by encoders and decoders.

Every network here maps a tensor with arbitrary leading batch dimensions to another, so the
same module serves a plain batch ``(N, ...)`` and vectorized particles ``(K, N, ...)``.
Encoders take data of shape ``(*batch, *x_shape)`` and return features ``(*batch, out_dim)``;
decoders take ``(*batch, in_dim)`` and return ``(*batch, *out_shape)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from pyro_vae._checks import check_count, check_number

__all__ = ["MLP", "ConvDecoder", "ConvEncoder", "GatedLinear", "latent_input_scale"]


def latent_input_scale(latent_dim: int, on_sphere: bool) -> float:
    r"""The constant a decoder should multiply ``z`` by so that its coordinates have unit
    variance, as for :math:`z \sim \mathcal{N}(0, I_d)`: :math:`\sqrt{d}` for a latent on
    the unit sphere :math:`S^{d-1}` (whose coordinates have variance :math:`1/d`), else 1.

    Why it matters: Adam moves each weight of the decoder's first layer by about the
    learning rate whatever its input, so inputs :math:`\sqrt{d}` times too small make the
    decoder learn to read :math:`z` :math:`\sqrt{d}` times more slowly, while the KL term
    shrinks the guide's concentration at full speed: without the scale a hyperspherical
    VAE can collapse to its prior.
    """
    return math.sqrt(latent_dim) if on_sphere else 1.0


def _check_scale(value: float) -> float:
    return float(check_number("input_scale", value, positive=True))


class GatedLinear(nn.Module):
    r"""A gated fully connected layer (Dauphin et al., 2017; the "GatedDense" of Tomczak and
    Welling, 2018): :math:`h = (W x + b) \odot \sigma(V x + c)`. The two products are one
    ``Linear`` of twice the width, split in halves.

    :param in_features: input width.
    :param out_features: output width.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = check_count("in_features", in_features)
        self.out_features = check_count("out_features", out_features)
        self.linear = nn.Linear(in_features, 2 * out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(gate)


class MLP(nn.Module):
    r"""A fully connected network: ``Linear -> activation`` for each hidden layer (or a
    :class:`GatedLinear` layer when ``gated``), then a final ``Linear``.

    :param in_shape: shape of one input item; its dimensions are flattened, so an encoder
        can take ``(1, 28, 28)`` images directly.
    :param hidden_dims: widths of the hidden layers, e.g. ``(400,)``.
    :param out_shape: shape of one output item; the last layer has ``prod(out_shape)``
        units, reshaped to ``out_shape``.
    :param activation: the non-linearity class (default :class:`torch.nn.Softplus`).
    :param input_scale: a constant the inputs are multiplied by (see
        :func:`latent_input_scale`).
    :param gated: hidden layers are :class:`GatedLinear` (no ``activation``).
    """

    def __init__(
        self,
        in_shape: int | Sequence[int],
        hidden_dims: Sequence[int],
        out_shape: int | Sequence[int],
        activation: type[nn.Module] = nn.Softplus,
        input_scale: float = 1.0,
        gated: bool = False,
    ) -> None:
        super().__init__()
        self.input_scale = _check_scale(input_scale)
        self.in_shape = _as_shape(in_shape)
        self.out_shape = _as_shape(out_shape)
        for h in hidden_dims:
            check_count("each hidden dim", h)
        widths = [math.prod(self.in_shape), *hidden_dims]
        layers: list[nn.Module] = []
        self.gated = bool(gated)
        for a, b in itertools.pairwise(widths):
            layers += [GatedLinear(a, b)] if gated else [nn.Linear(a, b), activation()]
        layers.append(nn.Linear(widths[-1], math.prod(self.out_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: x.dim() - len(self.in_shape)]
        x = x.reshape(*batch, -1)
        h = self.net(x if self.input_scale == 1.0 else x * self.input_scale)
        return h.reshape(*batch, *self.out_shape)


class ConvEncoder(nn.Module):
    r"""A small convolutional encoder for 28×28 images.

    ``Conv(c→32, 4, stride 2) → Conv(32→64, 4, stride 2) → Linear(64·7·7 → out_dim)``,
    with the activation after each layer. Input ``(*batch, c, 28, 28)``, output
    ``(*batch, out_dim)``.

    :param out_dim: number of output features.
    :param channels: number of image channels.
    :param activation: the non-linearity class (default :class:`torch.nn.ReLU`).
    """

    def __init__(
        self, out_dim: int, channels: int = 1, activation: type[nn.Module] = nn.ReLU
    ) -> None:
        super().__init__()
        check_count("out_dim", out_dim)
        check_count("channels", channels)
        self.in_shape = (channels, 28, 28)
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 4, stride=2, padding=1),
            activation(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),
            activation(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, out_dim),
            activation(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-3]
        h = self.net(x.reshape(-1, *self.in_shape))
        return h.reshape(*batch, -1)


class ConvDecoder(nn.Module):
    r"""A small transposed-convolution decoder producing 28×28 maps.

    ``Linear(in_dim → 64·7·7) → ConvT(64→32, 4, stride 2) → ConvT(32→c·k, 4, stride 2)``.
    Output ``(*batch, c * k, 28, 28)`` reshaped to ``out_shape``, where ``k`` is the number
    of distribution parameters per pixel.

    :param in_dim: input features (the latent dimension).
    :param out_shape: output shape, ``(c, 28, 28)`` or ``(k, c, 28, 28)``.
    :param activation: the non-linearity class (default :class:`torch.nn.ReLU`).
    :param input_scale: a constant the inputs are multiplied by (see
        :func:`latent_input_scale`).
    """

    def __init__(
        self,
        in_dim: int,
        out_shape: Sequence[int] = (1, 28, 28),
        activation: type[nn.Module] = nn.ReLU,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.input_scale = _check_scale(input_scale)
        check_count("in_dim", in_dim)
        self.out_shape = _as_shape(out_shape)
        if self.out_shape[-2:] != (28, 28):
            raise ValueError(
                f"ConvDecoder makes 28x28 maps, but out_shape is {self.out_shape}; "
                "use MLP for other shapes."
            )
        out_channels = math.prod(self.out_shape[:-2])
        self.net = nn.Sequential(
            nn.Linear(in_dim, 64 * 7 * 7),
            activation(),
            nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            activation(),
            nn.ConvTranspose2d(32, out_channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        z = z if self.input_scale == 1.0 else z * self.input_scale
        h = self.net(z.reshape(-1, z.shape[-1]))
        return h.reshape(*batch, *self.out_shape)


def _as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    out = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
    for s in out:
        check_count("every dimension of a shape", s)
    return out
