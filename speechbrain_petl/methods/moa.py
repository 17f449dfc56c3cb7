"""Mixtures of adapters: Soft-MoA and Dense-MoA (Cappellazzo et al., 2024).

Both put N adapter blocks ("experts", :class:`BottleneckAdapter` or, for
Dense-MoA, :class:`ConformerAdapter`) in parallel to a sub-layer of each
block and add a weighted combination of their outputs where a parallel
adapter's output is added: ``out = sublayer(x) + M(x)``, then the block's
residual. ``x`` is the sub-layer's input (in a pre-norm block the output of
its LayerNorm; by default the pre-attention one, as in the authors' code).

**Soft-MoA** (Puigcerver et al.'s Soft MoE applied to adapters). With ``x``
of shape (b, m tokens, d), slot parameters Φ (d, n experts, p slots):

* logits ``L = x Φ`` (b, m, n, p);
* dispatch ``D = softmax(L)`` over the m tokens of each sample;
  combine ``C = softmax(L)`` over the n·p slots of each token;
* slot inputs ``X̃[b, i, j] = Σ_m D[b, m, i, j] x[b, m]`` (b, n, p, d);
* expert i runs on its own p slots only: ``Ỹ_i = E_i(X̃_i)``;
* output ``Y[b, m] = Σ_{i, j} C[b, m, i, j] Ỹ[b, i, j]`` (b, m, d).

The experts see b·n·p slot vectors instead of b·m tokens, so their cost
hardly grows with n. A slot is a weighted average over all tokens: it has no
time axis, so a Conformer expert (a depthwise convolution over time) has
nothing to convolve and is refused.

**Dense-MoA**: a per-token router ``R = softmax(W_r x + b_r)`` (b, m, n) and
``Y = Σ_i R[..., i] E_i(x)``: every expert runs on every token, so the
expert cost grows linearly with n, and Conformer experts see the whole
sequence.

**Padding** (waveform lobes): padding tokens get no dispatch weight (their
logits are -inf before the softmax over tokens) and no output (``Y`` is zero
there), so a clip gives the same output alone or in a padded batch. Nothing
mixes samples: the dispatch softmax runs over one sample's tokens, the
router per token, so per-sample routing (several tasks in one batch) gives
each sample what its task alone gives.

**Initialisation**: the method itself zeroes each expert's last projection
(the down projection stays random), so the adapted model equals the frozen
backbone at initialisation and every tensor receives a gradient from the
second step on. The default experts use GELU, as the authors' do: a slot is
an average of many tokens, so all slots of a layer start nearly alike, and a
ReLU unit that is negative on them is dead for every slot and never trains
(with 6 units per expert, about one expert in 64 would start dead). Neither method merges into plain weights (the mixture
depends on the input): ``merge`` raises with the reason.
"""

import functools

import torch
from torch import nn

from speechbrain_petl.methods.adapters import BottleneckAdapter, ConformerAdapter
from speechbrain_petl.methods.base import ParameterCopy, PETLMethod, check_positive_int
from speechbrain_petl.sites import masked_fill_padding

PLACEMENTS = ("pfeiffer", "houlsby")
LOCATIONS = ("mhsa", "ffn")
#: The last projection of each known expert block, zeroed by the mixtures.
LAST_PROJECTION = {BottleneckAdapter: "up", ConformerAdapter: "pointwise_out"}


def l2_normalize(x, dim, eps=1e-6):
    """``x / (||x|| + eps)`` along ``dim``.

    Example
    -------
    >>> l2_normalize(torch.tensor([[3.0, 4.0]]), dim=-1).mul(5).round().tolist()
    [[3.0, 4.0]]
    """
    return x / (x.norm(dim=dim, keepdim=True) + eps)


def zero_last_projection(expert):
    """Zeroes the weight and bias of ``expert``'s last projection (its output
    is then zero whatever its input); returns the expert. Blocks of other
    kinds are refused: a mixture must start as the identity contribution.

    Example
    -------
    >>> expert = BottleneckAdapter(8, bottleneck=2)
    >>> torch.nn.init.normal_(expert.up.weight)  # doctest: +ELLIPSIS
    Parameter...
    >>> zero_last_projection(expert).up.weight.abs().sum().item()
    0.0
    """
    for kind, name in LAST_PROJECTION.items():
        if isinstance(expert, kind):
            last = getattr(expert, name)
            nn.init.zeros_(last.weight)
            if last.bias is not None:
                nn.init.zeros_(last.bias)
            return expert
    raise TypeError(
        f"Mixture experts must be BottleneckAdapter or ConformerAdapter blocks "
        f"(their last projection is zeroed at initialisation), got {type(expert).__name__}."
    )


def _block_class(block):
    """The class ``block`` builds, when it can be told without calling it."""
    while isinstance(block, functools.partial):
        block = block.func
    return block if isinstance(block, type) else None


class SoftMixture(nn.Module):
    """One Soft-MoA layer: n experts on p slots each (see the module docstring).

    Arguments
    ---------
    input_size : int
        Token width d.
    experts : list of nn.Module
        The n experts; each maps (b, p, d) to (b, p, d).
    slots : int
        Slots p per expert.
    normalize : bool
        L2-normalise the tokens and Φ (over d) before the logits, with a
        learned scale (initialised to 1).

    Example
    -------
    >>> experts = [BottleneckAdapter(16, bottleneck=2) for _ in range(3)]
    >>> mixture = SoftMixture(16, experts, slots=2)
    >>> mixture.slots.shape
    torch.Size([16, 3, 2])
    >>> mixture(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """

    def __init__(self, input_size, experts, slots=1, normalize=False):
        super().__init__()
        check_positive_int(slots, "slots", "SoftMoA")
        self.experts = nn.ModuleList(experts)
        self.slots = nn.Parameter(torch.empty(input_size, len(self.experts), slots))
        nn.init.xavier_normal_(self.slots)
        self.normalize = normalize
        if normalize:
            self.scale = nn.Parameter(torch.ones(()))

    def weights(self, x, mask=None):
        """``(dispatch, combine)``, both (b, m, n, p): dispatch sums to one
        over each sample's real tokens, combine over each token's slots."""
        b, m, _ = x.shape
        phi = self.slots
        if self.normalize:
            x = l2_normalize(x, dim=-1)
            phi = l2_normalize(phi, dim=0) * self.scale
        logits = torch.einsum("bmd,dnp->bmnp", x, phi)
        combine = torch.softmax(logits.reshape(b, m, -1), dim=-1).reshape(logits.shape)
        if mask is not None:
            logits = logits.masked_fill(~mask[:, :, None, None], float("-inf"))
        dispatch = torch.softmax(logits, dim=1)
        return dispatch, combine

    def forward(self, x, mask=None):
        """``x``: (b, m, d); ``mask``: (b, m) bool (True: real) or None."""
        x = masked_fill_padding(x, mask)
        dispatch, combine = self.weights(x, mask)
        slot_inputs = torch.einsum("bmd,bmnp->bnpd", x, dispatch)
        if self._batchable():
            slot_outputs = self._bottlenecks(slot_inputs)
        else:
            slot_outputs = torch.stack(
                [expert(slot_inputs[:, i]) for i, expert in enumerate(self.experts)], dim=1
            )
        y = torch.einsum("bnpd,bmnp->bmd", slot_outputs, combine)
        return masked_fill_padding(y, mask)

    def _batchable(self):
        """Whether the experts are bottlenecks of one shape and activation,
        which run as two batched products (same result as one by one)."""
        first = self.experts[0]
        return all(
            type(e) is BottleneckAdapter and type(e.activation) is type(first.activation)
            and e.down.weight.shape == first.down.weight.shape and e.down.bias is not None and e.up.bias is not None
            for e in self.experts
        )

    def _bottlenecks(self, slot_inputs):
        """Every bottleneck expert on its own slots: (b, n, p, d) -> (b, n, p, d)."""
        experts = self.experts
        down = torch.stack([e.down.weight for e in experts])  # (n, r, d)
        down_bias = torch.stack([e.down.bias for e in experts])  # (n, r)
        up = torch.stack([e.up.weight for e in experts])  # (n, d, r)
        up_bias = torch.stack([e.up.bias for e in experts])  # (n, d)
        h = torch.einsum("bnpd,nrd->bnpr", slot_inputs, down) + down_bias[:, None]
        h = experts[0].activation(h)
        return torch.einsum("bnpr,ndr->bnpd", h, up) + up_bias[:, None]


class DenseMixture(nn.Module):
    """One Dense-MoA layer: ``Σ_i softmax(W_r x)_i E_i(x)`` per token.

    Arguments
    ---------
    input_size : int
        Token width d.
    experts : list of nn.Module
        The N experts; each maps (b, m, d) (and the mask) to (b, m, d).

    Example
    -------
    >>> experts = [ConformerAdapter(16, bottleneck=2, kernel_size=3) for _ in range(2)]
    >>> mixture = DenseMixture(16, experts)
    >>> mixture(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """

    def __init__(self, input_size, experts):
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.router = nn.Linear(input_size, len(self.experts))

    def forward(self, x, mask=None):
        """``x``: (b, m, d); ``mask``: (b, m) bool (True: real) or None."""
        x = masked_fill_padding(x, mask)
        probs = torch.softmax(self.router(x), dim=-1)
        y = None
        for i, expert in enumerate(self.experts):
            term = probs[..., i : i + 1] * expert(x, mask)
            y = term if y is None else y + term
        return masked_fill_padding(y, mask)


class _Mixtures(PETLMethod):
    """What Soft-MoA and Dense-MoA share: experts, placement, LayerNorm copies."""

    default_name = "moa"

    def __init__(
        self, block=None, experts=7, reduction_rate=128, placement="pfeiffer",
        location="mhsa", train_norm=True, layers=None,
    ):  # fmt: skip
        super().__init__(layers=layers)
        owner = type(self).__name__
        check_positive_int(experts, "experts", owner)
        check_positive_int(reduction_rate, "reduction_rate", owner)
        if placement not in PLACEMENTS:
            raise ValueError(f"{owner}: placement must be one of {list(PLACEMENTS)}, got {placement!r}")
        if location not in LOCATIONS:
            raise ValueError(f"{owner}: location must be one of {list(LOCATIONS)}, got {location!r}")
        if block is not None and not callable(block):
            raise ValueError(f"{owner}: block must be a class or !name: partial, got {block!r}")
        self.block = block
        self.num_experts = experts
        self.reduction_rate = reduction_rate
        self.placement = placement
        self.location = location
        self.train_norm = train_norm

    def sublayers(self):
        """The sub-layers a mixture sits beside in each block."""
        return LOCATIONS if self.placement == "houlsby" else (self.location,)

    def make_expert(self, input_size):
        """One expert, its last projection zeroed (when no block is given:
        a GELU bottleneck of width ``round(d / reduction_rate)``)."""
        if self.block is None:
            width = max(1, round(input_size / self.reduction_rate))
            expert = BottleneckAdapter(input_size, bottleneck=width, activation=nn.GELU)
        else:
            expert = self.block(input_size=input_size)
        return zero_last_projection(expert)

    def _attach(self, backbone, name):
        size = backbone.hidden_size
        for layer in self.selected_layers(backbone):
            for sublayer in self.sublayers():
                experts = [self.make_expert(size) for _ in range(self.num_experts)]
                mixture = self.register(layer, sublayer, self.make_mixture(size, experts))
                backbone.site(layer, sublayer).attach(name, functools.partial(_add, mixture))
                if self.train_norm:
                    norm_site = backbone.site(layer, f"{sublayer}_norm")
                    norm = self.register(
                        layer, f"{sublayer}_norm", ParameterCopy(norm_site, ("weight", "bias"))
                    )
                    norm.override(name)

    def merge(self, backbone, name):
        """Refused: a mixture's output depends on its input through the
        router or the slots, so no plain weight holds it."""
        raise TypeError(
            f"{type(self).__name__} has nothing that folds into the frozen weights: its "
            "experts are adapter blocks combined with input-dependent weights (router or slots), "
            "which no plain weight can hold."
        )

    def describe(self):
        """One line on the attached mixture's shape (for the params report).

        Example
        -------
        >>> from speechbrain_petl.backbones import AST, tiny_config
        >>> ast = AST(tiny_config("ast"), pretrained=False, max_frames=64, petl=SoftMoA(reduction_rate=8))
        >>> ast.petl["soft_moa"].describe()
        'SoftMoA: 7 experts x BottleneckAdapter (width 4) per site, 1 slot per expert, 1 site per block (mhsa) x 2 blocks'
        """
        sites = [(layer, name) for layer, sub in self.layers.items() for name in sub if not name.endswith("_norm")]
        if not sites:
            return f"{type(self).__name__}: not attached"
        layer, name = sites[0]
        expert = self.layers[layer][name].experts[0]
        width = getattr(expert, "down", None) or getattr(expert, "depthwise", None)
        width = width.out_features if isinstance(width, nn.Linear) else width.out_channels
        text = f"{type(self).__name__}: {self.num_experts} experts x {type(expert).__name__} (width {width}) per site"
        if isinstance(self, SoftMoA):
            text += f", {self.slots} slot{'s' if self.slots > 1 else ''} per expert"
        else:
            text += ", a per-token router"
        subs = self.sublayers()
        return text + f", {len(subs)} site{'s' if len(subs) > 1 else ''} per block ({', '.join(subs)}) x {len(self.layers)} blocks"

    def constructor_args(self):
        """The arguments that rebuild this method (for export)."""
        return {
            **super().constructor_args(),
            "block": self.block,
            "experts": self.num_experts,
            "reduction_rate": self.reduction_rate,
            "placement": self.placement,
            "location": self.location,
            "train_norm": self.train_norm,
        }


def _add(mixture, x, y, mask):
    """Sub-layer hook: the mixture in parallel to the sub-layer."""
    return y + mixture(x, mask)


class SoftMoA(_Mixtures):
    """Soft mixture of adapters (Soft-MoA) beside a sub-layer of each block.

    Defaults are the authors': 7 GELU bottleneck experts of width
    ``round(d / 128)`` (6 on AST-base), 1 slot each, beside the attention (Pfeiffer placement,
    ``location="mhsa"``, fed by the pre-attention LayerNorm, whose copy is
    trained), no normalisation.

    Arguments
    ---------
    block : callable, optional
        Builds one expert given ``input_size`` (in YAML: ``!name:speechbrain_petl.methods.BottleneckAdapter``
        with its ``bottleneck`` and ``activation``); default a GELU bottleneck of
        width ``round(d / reduction_rate)``.
        Conformer experts are refused (a slot has no time axis).
    experts : int
        Number of experts n.
    slots : int
        Slots p per expert.
    reduction_rate : int
        Bottleneck width ``round(d / reduction_rate)`` (at least 1) when ``block`` is None.
    placement : str
        ``"pfeiffer"`` (one mixture per block, at ``location``) or
        ``"houlsby"`` (one at the MHSA and one at the FFN).
    location : str
        ``"mhsa"`` or ``"ffn"``: where the Pfeiffer mixture sits.
    normalize : bool
        L2-normalise tokens and Φ before the logits, with a learned scale.
    train_norm : bool
        Train a copy of the LayerNorm feeding each mixture.
    layers : list of int, optional
        Blocks to adapt (default all).

    Example
    -------
    >>> import functools
    >>> SoftMoA(experts=4, slots=2).constructor_args()["slots"]
    2
    >>> SoftMoA(functools.partial(ConformerAdapter, bottleneck=8))
    Traceback (most recent call last):
     ...
    ValueError: SoftMoA: Conformer experts are refused: a slot is a weighted average of all the tokens of a clip and has no time axis, so the Conformer adapter's depthwise convolution over time has nothing to convolve. Use bottleneck experts, or DenseMoA, whose experts see the whole sequence.
    """

    default_name = "soft_moa"

    def __init__(
        self, block=None, experts=7, slots=1, reduction_rate=128, placement="pfeiffer",
        location="mhsa", normalize=False, train_norm=True, layers=None,
    ):  # fmt: skip
        super().__init__(block, experts, reduction_rate, placement, location, train_norm, layers)
        check_positive_int(slots, "slots", "SoftMoA")
        cls = _block_class(block)
        if cls is not None and issubclass(cls, ConformerAdapter):
            raise ValueError(_CONFORMER_REFUSED)
        self.slots = slots
        self.normalize = bool(normalize)

    def make_expert(self, input_size):
        """One bottleneck expert (Conformer experts are refused, see the class)."""
        expert = super().make_expert(input_size)
        if isinstance(expert, ConformerAdapter):
            raise ValueError(_CONFORMER_REFUSED)
        return expert

    def make_mixture(self, input_size, experts):
        """The Soft-MoA layer of one site."""
        return SoftMixture(input_size, experts, slots=self.slots, normalize=self.normalize)

    def constructor_args(self):
        """The arguments that rebuild this method (for export)."""
        return {**super().constructor_args(), "slots": self.slots, "normalize": self.normalize}


_CONFORMER_REFUSED = (
    "SoftMoA: Conformer experts are refused: a slot is a weighted average of all the tokens "
    "of a clip and has no time axis, so the Conformer adapter's depthwise convolution over "
    "time has nothing to convolve. Use bottleneck experts, or DenseMoA, whose experts see the "
    "whole sequence."
)


class DenseMoA(_Mixtures):
    """Dense mixture of adapters (Dense-MoA) beside a sub-layer of each block.

    Every expert runs on every token; a per-token router weighs their
    outputs. Bottleneck or Conformer experts (the latter see the whole
    sequence, padding zeroed, so their depthwise convolution has its time
    axis). Same placement options and defaults as :class:`SoftMoA`.

    Arguments
    ---------
    block : callable, optional
        Builds one expert given ``input_size``; default a GELU bottleneck
        of width ``round(d / reduction_rate)``.
    experts : int
        Number of experts N.
    reduction_rate : int
        Bottleneck width ``round(d / reduction_rate)`` when ``block`` is None.
    placement, location, train_norm, layers
        As for :class:`SoftMoA`.

    Example
    -------
    >>> import functools
    >>> moa = DenseMoA(functools.partial(ConformerAdapter, bottleneck=4, kernel_size=31), experts=3)
    >>> moa.constructor_args()["experts"]
    3
    """

    default_name = "dense_moa"

    def make_mixture(self, input_size, experts):
        """The Dense-MoA layer of one site."""
        return DenseMixture(input_size, experts)


__all__ = ["DenseMixture", "DenseMoA", "SoftMixture", "SoftMoA", "l2_normalize", "zero_last_projection"]
