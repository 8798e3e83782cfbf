"""Convolutional VAE encoder/decoder and the GatedVAE module.

Source: the 64x64 reference network of disentanglement_lib (Locatello et al., ICML 2019,
``architectures.conv_encoder`` / ``deconv_decoder``), itself the beta-VAE network of Higgins et
al. (ICLR 2017): four 4x4 stride-2 convolutions with 32-32-64-64 channels and ReLU, a 256-unit
dense layer, and two linear heads for the posterior mean and log-variance; the decoder mirrors
it (dense 256 -> dense to 64x4x4 -> four 4x4 stride-2 transposed convolutions -> logits).
The gated reparameterisation between them is Gated-VAE's (Vowels et al., arXiv 1911.06443),
implemented in ``gvae_dist.gate``.

Other image sizes keep a 4x4 bottleneck by changing the number of stride-2 layers
(32 -> 3, 64 -> 4, 128 -> 5). ``channels`` lists the per-layer widths of the encoder: with more
layers than entries the last width is repeated, with fewer the first ``n_layers`` are used.

Legend: B batch, C image channels, H/W image height/width, D latent dims, F hidden features.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from gvae_dist.gate import gated_reparameterize

if TYPE_CHECKING:  # only for the annotation: the model reads a config, it does not import one
    from gvae_dist.config import Config

__all__ = ["BOTTLENECK", "SUPPORTED_IMAGE_SIZES", "GatedVAE", "VAEOutput", "build_model", "eval_mode", "layer_channels"]

BOTTLENECK = 4
"""Spatial size (height = width) of the last encoder feature map."""

SUPPORTED_IMAGE_SIZES = {32: 3, 64: 4, 128: 5}
"""Image size -> number of 4x4 stride-2 (de)convolutions that reach the 4x4 bottleneck."""


# Weight of the newest batch in the running mean of the posterior means (center_codes); as
# BatchNorm's default momentum, so a few hundred steps settle it.
CODE_MEAN_MOMENTUM = 0.1


class VAEOutput(NamedTuple):
    """Everything one forward pass produces.

    Fields:
        mu: ``[B, D]`` posterior mean.
        logvar: ``[B, D]`` posterior log-variance.
        z_dec: ``[B, D]`` sample fed to the decoder (gradient gated by the mask).
        z_reg: ``[B, D]`` the same sample with an un-gated gradient (for MMD-type regularisers).
        logits: ``[B, C, H, W]`` decoder output before the sigmoid.
    """

    mu: torch.Tensor
    logvar: torch.Tensor
    z_dec: torch.Tensor
    z_reg: torch.Tensor
    logits: torch.Tensor


def layer_channels(image_size: int, channels: Sequence[int]) -> list[int]:
    """Per-layer encoder widths for ``image_size``.

    Raises:
        ValueError: if ``image_size`` is not 32, 64 or 128, or ``channels`` is empty or has a
            non-positive entry.
    """
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise ValueError(f"image_size must be one of {sorted(SUPPORTED_IMAGE_SIZES)}, got {image_size!r}")
    channels = list(channels)
    if not channels or any(not isinstance(c, int) or c < 1 for c in channels):
        raise ValueError(f"channels must be a non-empty list of positive integers, got {channels!r}")
    n_layers = SUPPORTED_IMAGE_SIZES[image_size]
    return (channels + [channels[-1]] * n_layers)[:n_layers]


def _positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class Encoder(nn.Module):
    """``x_BCHW -> (mu_BD, logvar_BD)``: stride-2 convolutions, a dense layer, two heads."""

    def __init__(self, in_channels: int, widths: Sequence[int], hidden: int, latent_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for width in widths:
            layers += [nn.Conv2d(prev, width, kernel_size=4, stride=2, padding=1), nn.ReLU()]
            prev = width
        layers += [
            nn.Flatten(),
            nn.Linear(prev * BOTTLENECK * BOTTLENECK, hidden),
            nn.ReLU(),
        ]
        self.trunk = nn.Sequential(*layers)
        # Two separate heads (as in disentanglement_lib) so each latent dim owns one row of each.
        self.mu_head = nn.Linear(hidden, latent_dim)
        self.logvar_head = nn.Linear(hidden, latent_dim)

    def forward(self, x_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_BF = self.trunk(x_BCHW)
        return self.mu_head(h_BF), self.logvar_head(h_BF)


class AddCoords(nn.Module):
    """``h_BCHW -> [B, C + 2, H, W]``: appends the pixel's x and y, each in [-1, 1], as two
    channels (CoordConv, Liu et al., NeurIPS 2018: a convolution that sees where it is can map a
    coordinate held in its input to a position in its output, which plain (transposed)
    convolutions learn poorly)."""

    def forward(self, h_BCHW: torch.Tensor) -> torch.Tensor:
        b, _, h, w = h_BCHW.shape
        ys = torch.linspace(-1.0, 1.0, h, device=h_BCHW.device, dtype=h_BCHW.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=h_BCHW.device, dtype=h_BCHW.dtype)
        grid_2HW = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))
        return torch.cat([h_BCHW, grid_2HW.expand(b, -1, -1, -1)], dim=1)


class Decoder(nn.Module):
    """``z_BD -> logits_BCHW``: the encoder mirrored with transposed convolutions; with
    ``refine`` > 0 the last one outputs ``refine`` channels and a ReLU and a 3x3 convolution at
    full resolution draw the image (with 0 the parameters and their names are the plain net's);
    with ``coords`` every (transposed) convolution also sees its pixels' coordinates
    (:class:`AddCoords`)."""

    def __init__(
        self,
        out_channels: int,
        widths: Sequence[int],
        hidden: int,
        latent_dim: int,
        refine: int = 0,
        coords: bool = False,
    ):
        super().__init__()
        self.bottleneck_channels = widths[-1]
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, widths[-1] * BOTTLENECK * BOTTLENECK),
            nn.ReLU(),
        )
        # Encoder widths reversed: the first deconv keeps the bottleneck width, the last one
        # produces the image channels (64x4x4 -> 64 -> 32 -> 32 -> C for the reference net).
        outs = list(reversed(widths[:-1])) + [refine or out_channels]
        extra = 2 if coords else 0
        layers: list[nn.Module] = []
        prev = widths[-1]
        for i, width in enumerate(outs):
            layers += [AddCoords()] if coords else []
            layers.append(nn.ConvTranspose2d(prev + extra, width, kernel_size=4, stride=2, padding=1))
            if i < len(outs) - 1:
                layers.append(nn.ReLU())
            prev = width
        if refine:
            layers += [nn.ReLU()] + ([AddCoords()] if coords else [])
            layers.append(nn.Conv2d(refine + extra, out_channels, kernel_size=3, padding=1))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z_BD: torch.Tensor) -> torch.Tensor:
        h_BF = self.fc(z_BD)
        h_BCHW = h_BF.unflatten(1, (self.bottleneck_channels, BOTTLENECK, BOTTLENECK))
        return self.deconv(h_BCHW)


class GatedVAE(nn.Module):
    """Conv VAE whose decoder-path gradient into the latent is gated per example and per dim.

    Args:
        in_channels: image channels C (1 or 3); the decoder outputs as many logit channels.
        image_size: H = W, one of 32, 64, 128.
        latent_dim: D.
        channels: encoder conv widths (see module docstring for how they fit the layer count).
        hidden: width of the dense layer on each side of the latent.
        refine_channels: 0, or the width of the decoder's full-resolution stage (:class:`Decoder`).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        latent_dim: int,
        channels: Sequence[int] = (32, 32, 64, 64),
        hidden: int = 256,
        center_codes: bool = False,
        refine_channels: int = 0,
    ):
        super().__init__()
        _positive_int("in_channels", in_channels)
        if not isinstance(refine_channels, int) or refine_channels < 0:
            raise ValueError(f"refine_channels must be 0 or a positive integer, got {refine_channels!r}")
        _positive_int("latent_dim", latent_dim)
        _positive_int("hidden", hidden)
        widths = layer_channels(image_size, channels)
        self.in_channels = in_channels
        self.image_size = image_size
        self.latent_dim = latent_dim
        self.encoder = Encoder(in_channels, widths, hidden, latent_dim)
        self.decoder = Decoder(in_channels, widths, hidden, latent_dim, refine_channels)
        self.center_codes = center_codes
        if center_codes:  # only then: checkpoints of uncentred models keep their keys
            self.register_buffer("code_mean", torch.zeros(latent_dim))

    def encode(self, x_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_BCHW`` in [0, 1] -> ``(mu_BD, logvar_BD)``; with ``center_codes`` the posterior
        means less their batch mean in training (gradient through it) and less its running
        average (``code_mean``) in eval mode."""
        mu_BD, logvar_BD = self.encoder(x_BCHW)
        if not self.center_codes:
            return mu_BD, logvar_BD
        if self.training and mu_BD.shape[0] > 1:
            mean_D = mu_BD.mean(0)
            with torch.no_grad():
                self.code_mean.lerp_(mean_D.detach().to(self.code_mean.dtype), CODE_MEAN_MOMENTUM)
            return mu_BD - mean_D, logvar_BD
        return mu_BD - self.code_mean.to(mu_BD.dtype), logvar_BD

    def decode(self, z_BD: torch.Tensor) -> torch.Tensor:
        """``z_BD`` -> ``logits_BCHW`` (apply a sigmoid for pixel means)."""
        return self.decoder(z_BD)

    @torch.no_grad()
    def sample_code(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """A posterior sample ``z_BD`` of ``x_BCHW`` without gradient (the partner's code that
        ``gate.closed_code: target`` puts on the closed dims)."""
        mu_BD, logvar_BD = self.encode(x_BCHW)
        return mu_BD + torch.randn_like(mu_BD) * torch.exp(0.5 * logvar_BD)

    def decode_rows(self, z_BD: torch.Tensor, update_B: torch.Tensor) -> torch.Tensor:
        """Decode where only the rows ``update_B`` (bool ``[B]``) contribute to the decoder
        weights' gradient; the other rows' gradient still reaches ``z`` (``gate.decoder: false``).

        The batch is split in two decoder calls, the second with detached weights: the same
        work as one call, plus one host sync for the split size.
        """
        order_B = torch.argsort((~update_B).to(torch.int8), stable=True)
        n_upd = int(update_B.sum())
        z_sorted = z_BD[order_B]
        params = {k: v.detach() for k, v in self.decoder.named_parameters()}
        out_upd = self.decoder(z_sorted[:n_upd])
        out_fixed = torch.func.functional_call(self.decoder, params, (z_sorted[n_upd:],))
        logits = torch.cat([out_upd, out_fixed])
        return logits[torch.argsort(order_B)]

    def forward(
        self,
        x_BCHW: torch.Tensor,
        mask: torch.Tensor | None = None,
        eps_BD: torch.Tensor | None = None,
        closed_BD: torch.Tensor | None = None,
        decoder_update_B: torch.Tensor | None = None,
    ) -> VAEOutput:
        """Encode, sample with a gated reparameterisation, decode.

        Args:
            x_BCHW: input images.
            mask: ``[B, D]`` or ``[D]`` gate (1 = reconstruction gradient reaches that dim),
                or None for the un-gated model.
            eps_BD: standard normal noise; drawn with ``torch.randn_like(mu)`` when None.
            closed_BD: code for the closed dims on the decoder path (``gate.closed_code:
                target``), or None (the input's own sample).
            decoder_update_B: bool ``[B]``, rows whose reconstruction updates the decoder
                weights (``gate.decoder: false``), or None (all rows).

        Returns:
            ``VAEOutput(mu, logvar, z_dec, z_reg, logits)``.
        """
        mu_BD, logvar_BD = self.encode(x_BCHW)
        if eps_BD is None:
            eps_BD = torch.randn_like(mu_BD)
        z_dec_BD, z_reg_BD = gated_reparameterize(mu_BD, logvar_BD, eps_BD, mask, closed_BD)
        if decoder_update_B is None:
            logits_BCHW = self.decode(z_dec_BD)
        else:
            logits_BCHW = self.decode_rows(z_dec_BD, decoder_update_B)
        return VAEOutput(mu_BD, logvar_BD, z_dec_BD, z_reg_BD, logits_BCHW)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model):`` the model in eval mode, and back in the mode it was in after
    (evaluation and pictures during training leave a training model training)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def build_model(cfg: Config, channels: int) -> GatedVAE:
    """The :class:`GatedVAE` that ``cfg.model`` and ``cfg.data.image_size`` describe, for images
    with ``channels`` channels (training, evaluation and every tool that loads a checkpoint)."""
    m = cfg.model
    return GatedVAE(
        in_channels=channels,
        image_size=cfg.data.image_size,
        latent_dim=m.latent_dim,
        channels=tuple(m.channels),
        hidden=m.hidden,
        center_codes=m.center_codes,
        refine_channels=m.refine_channels,
    )
