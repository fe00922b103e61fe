"""Weight sharing (non-linear quantization): per-tensor codebooks of 2^b centroids by 1-D k-means, and trained
centroids, after Deep Compression (Han, Mao & Dally, ICLR 2016, section 3).

A shared tensor is a :class:`SharedWeight`: a ``codebook`` of ``k`` float32 centroids (ascending) and an
``index`` of the tensor's shape giving each entry's centroid; entries that are exactly zero (pruned) take no
codebook entry, their index is ``k`` (:attr:`SharedWeight.zero`), and they stay zero.

Clustering (:func:`kmeans_1d`) is Lloyd's algorithm in one dimension, done exactly and fast: the values are
sorted once, the clusters of sorted centroids are contiguous runs between the midpoints of neighbouring
centroids (:func:`assign`), and each iteration finds the runs with a binary search and their means with prefix
sums (float64): ``O(k log n)`` an iteration, to the fixed point where no value changes cluster. Initialisations
(:data:`INITS`), as compared by Han et al.: ``"linear"`` (evenly spaced between the smallest and the largest
value: the best there, as it keeps the large, rare weights), ``"density"`` (quantiles of the values at levels
``(i + 1/2) / k``: more centroids where the weights are dense) and ``"random"`` (Forgy: ``k`` distinct values
drawn at random). An empty cluster keeps its centroid.

Trained centroids (Han et al. eq. 3): the gradient of a centroid is the sum of the gradients of the weights
that share it (:func:`centroid_gradient`). Training keeps the weights plain parameters: each shared weight's
gradient is replaced by its centroid's (:func:`share_gradients_`), so that every weight of a cluster takes the
same optimizer step (with SGD exactly ``c -= lr * sum of gradients``; momentum and Adam moments are first tied
per cluster by :func:`tie_optimizer_state_`), and after the step the centroids are read back as the cluster means
and written to the weights again (:func:`update_codebook_`), which keeps a cluster exactly tied whatever the
optimizer does. :func:`shared_values` is the same map as a differentiable function of the codebook (a
reparametrisation): autograd through it gives the same centroid gradient.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_optim.checks import check_choice

#: the codebook initialisations of :func:`init_centroids`
INITS: tuple[str, ...] = ("linear", "density", "random")
#: the bit widths a codebook may have (2^bits centroids)
BITS: tuple[int, ...] = tuple(range(1, 9))
#: the iterations :func:`kmeans_1d` runs at most (it usually reaches its fixed point much sooner)
MAX_ITER = 300


@dataclass
class SharedWeight:
    """A tensor as a codebook and an index: ``values = codebook[index]``, zero where ``index == k``.

    Attributes:
        codebook: the ``k`` centroids, float32, ascending.
        index: int64, the tensor's shape: each entry's centroid, ``k`` for an entry that is zero (no entry).
    """

    codebook: Tensor
    index: Tensor

    @property
    def k(self) -> int:
        """The number of centroids."""
        return int(self.codebook.numel())

    @property
    def zero(self) -> int:
        """The index of the entries that are zero and take no codebook entry (``k``)."""
        return self.k

    @property
    def mask(self) -> Tensor:
        """``True`` where the entry has a centroid (is not a pruned zero)."""
        return self.index != self.k

    @property
    def bits(self) -> int:
        """Bits of a fixed-width index (``ceil(log2(k))``, at least 1)."""
        return max(1, math.ceil(math.log2(max(self.k, 2))))

    def values(self) -> Tensor:
        """The dense tensor (float32, on the index's device)."""
        return shared_values(self.codebook.to(self.index.device), self.index)

    def to(self, device: torch.device | str) -> SharedWeight:
        """A copy on ``device``."""
        return SharedWeight(self.codebook.to(device), self.index.to(device))


# ----------------------------------------------------------------------------------------------- checks
def check_bits(bits: int, option: str = "bits") -> int:
    """``bits`` if it is an int in 1..8 (a codebook of 2..256 centroids), else the :func:`check_choice` error."""
    if isinstance(bits, bool) or not isinstance(bits, int):  # True == 1 and 4.0 == 4 are no bit widths
        raise ValueError(f"Unknown `{option}` {bits!r}; allowed: {list(BITS)}.")
    return check_choice(option, bits, BITS)


def check_init(init: str) -> str:
    """``init`` if it is one of :data:`INITS`, else the :func:`check_choice` error."""
    return check_choice("init", init, INITS)


# ----------------------------------------------------------------------------------------------- k-means
def init_centroids(
    values: Tensor, k: int, init: str = "linear", generator: torch.Generator | None = None
) -> Tensor:
    """``k`` initial centroids (float64, ascending) for the 1-D ``values`` (see the module docstring).

    Args:
        values: the values to cluster (any shape; flattened); at least one.
        k: the number of centroids.
        init: ``"linear"``, ``"density"`` or ``"random"``.
        generator: the random source of ``"random"`` (``None``: torch's global one).

    Raises:
        ValueError: an unknown ``init``, ``k < 1``, no values, or (``"random"``) fewer values than ``k``.
    """
    check_init(init)
    v = values.detach().flatten().double()
    if k < 1 or v.numel() == 0:
        raise ValueError(f"k-means needs k >= 1 and at least one value (k={k}, {v.numel()} values)")
    if init == "linear":
        return torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64, device=v.device)
    if init == "density":
        ordered = torch.sort(v).values
        levels = (torch.arange(k, dtype=torch.float64, device=v.device) + 0.5) / k
        picks = (levels * v.numel()).floor().long().clamp(max=v.numel() - 1)
        return ordered[picks]
    if v.numel() < k:
        raise ValueError(f"`init='random'` draws {k} distinct values and there are {v.numel()}")
    picks = torch.randperm(v.numel(), generator=generator, device="cpu")[:k].to(v.device)
    return torch.sort(v[picks]).values


def boundaries(centroids: Tensor) -> Tensor:
    """The midpoints between neighbouring (ascending) centroids, float64: the edges of the clusters."""
    c = centroids.double()
    return (c[:-1] + c[1:]) / 2


def assign(values: Tensor, centroids: Tensor) -> Tensor:
    """The nearest of the ascending ``centroids`` for each value (int64, ``values``' shape); a value exactly
    between two centroids goes to the lower one (as ``argmin`` of the distances does)."""
    return torch.searchsorted(boundaries(centroids).contiguous(), values.detach().double().contiguous())


@dataclass
class KMeansResult:
    """What :func:`kmeans_1d` found."""

    #: the centroids, float32, ascending
    centroids: Tensor
    #: each value's centroid (int64, the values' shape)
    index: Tensor
    #: Lloyd iterations run
    iterations: int
    #: whether the fixed point was reached within ``max_iter``
    converged: bool


def kmeans_1d(
    values: Tensor,
    k: int,
    init: str = "linear",
    max_iter: int = MAX_ITER,
    generator: torch.Generator | None = None,
) -> KMeansResult:
    """Lloyd's k-means of 1-D ``values`` into ``k`` clusters, exactly (see the module docstring).

    Args:
        values: the values (any shape; flattened for clustering, the index has their shape).
        k: the number of centroids.
        init: the initialisation, one of :data:`INITS`.
        max_iter: the most Lloyd iterations.
        generator: the random source of ``init="random"``.

    Returns:
        The centroids (float32, ascending), each value's centroid, the iterations and whether it converged.
    """
    if max_iter < 0:
        raise ValueError(f"`max_iter` must be >= 0, got {max_iter}")
    flat = values.detach().flatten().double()
    centroids = init_centroids(flat, k, init, generator)
    ordered = torch.sort(flat).values
    prefix = torch.cat([ordered.new_zeros(1), torch.cumsum(ordered, 0)])
    edges = None  # the cluster edges (in the sorted values) that gave the current centroids
    iterations, converged = 0, False
    while True:
        ends = torch.searchsorted(ordered, boundaries(centroids), right=True)
        if edges is not None and torch.equal(ends, edges):
            converged = True  # the same clusters again: the means would not move
            break
        if iterations == max_iter:
            break
        edges = ends
        starts = torch.cat([ends.new_zeros(1), ends])
        stops = torch.cat([ends, ends.new_full((1,), ordered.numel())])
        counts = stops - starts
        means = (prefix[stops] - prefix[starts]) / counts.clamp(min=1)
        centroids = torch.where(counts > 0, means, centroids)  # an empty cluster keeps its centroid
        iterations += 1
    final = centroids.float()
    return KMeansResult(final, assign(values, final), iterations, converged)


def cluster_weight(
    weight: Tensor,
    bits: int,
    init: str = "linear",
    max_iter: int = MAX_ITER,
    generator: torch.Generator | None = None,
    name: str = "weight",
) -> SharedWeight:
    """Share ``weight`` through a codebook of ``2**bits`` centroids, k-means of its non-zero entries (zeros
    take no entry and stay zero).

    Raises:
        ValueError: ``bits`` outside 1..8, an unknown ``init``, or fewer non-zero entries than centroids.
    """
    check_bits(bits)
    k = 1 << bits
    w = weight.detach()
    nonzero = w != 0
    count = int(nonzero.sum())
    if count < k:
        fix = (
            f"use at most {int(math.log2(count))} bits for it (a per-layer `bits` map) or leave it out (`exclude`)"
            if count >= 2
            else "leave it out (`exclude`)"
        )
        raise ValueError(
            f"`bits`={bits} gives {name} {tuple(w.shape)} {k} centroids, but it has only {count} non-zero "
            f"weights: {fix}."
        )
    result = kmeans_1d(w[nonzero], k, init, max_iter, generator)
    index = torch.full(w.shape, k, dtype=torch.int64, device=w.device)
    index[nonzero] = result.index.to(w.device)
    return SharedWeight(result.centroids.to(w.device), index)


def shared_values(codebook: Tensor, index: Tensor) -> Tensor:
    """``codebook[index]`` with zero where ``index == len(codebook)``: differentiable in ``codebook`` (the
    reparametrisation whose gradient is :func:`centroid_gradient`)."""
    table = torch.cat([codebook.flatten(), codebook.new_zeros(1)])
    return table[index]


# ----------------------------------------------------------------------------------------------- training
def _cluster_sums(values: Tensor, shared: SharedWeight) -> Tensor:
    """Sum (float64) of ``values`` over each cluster, ``k + 1`` entries (the last: the zero entries)."""
    sums = torch.zeros(shared.k + 1, dtype=torch.float64, device=values.device)
    return sums.index_add_(0, shared.index.flatten(), values.detach().flatten().double())


def _cluster_means(values: Tensor, shared: SharedWeight, counts: Tensor | None = None) -> Tensor:
    """The mean of ``values`` over each cluster (float64, ``k`` entries; ``nan`` for an empty one)."""
    if counts is None:
        counts = cluster_sizes(shared)
    return _cluster_sums(values, shared)[:-1] / counts.to(torch.float64)


def cluster_sizes(shared: SharedWeight) -> Tensor:
    """How many entries share each centroid (int64, ``k``)."""
    return torch.bincount(shared.index.flatten(), minlength=shared.k + 1)[: shared.k]


def centroid_gradient(grad: Tensor, shared: SharedWeight) -> Tensor:
    """The gradient of each centroid: the sum of the gradients of the weights that share it (Han et al. eq. 3),
    float32, ``k`` entries (the zero entries contribute nothing)."""
    return _cluster_sums(grad, shared)[:-1].float()


@torch.no_grad()
def share_gradients_(param: Tensor, shared: SharedWeight) -> None:
    """Replace ``param.grad`` by its centroid gradient: each shared weight gets the summed gradient of its
    cluster, a zero entry gets 0 (a parameter without a gradient is left alone)."""
    if param.grad is None:
        return
    table = torch.cat([centroid_gradient(param.grad, shared), param.grad.new_zeros(1, dtype=torch.float32)])
    param.grad.copy_(table[shared.index].to(param.grad.dtype))


@torch.no_grad()
def freeze_gradients_(param: Tensor) -> None:
    """Zero ``param.grad`` (centroids that do not train)."""
    if param.grad is not None:
        param.grad.zero_()


@torch.no_grad()
def tie_optimizer_state_(optimizer: torch.optim.Optimizer, param: Tensor, shared: SharedWeight) -> None:
    """Replace each per-entry optimizer state of ``param`` (momentum, Adam's moments: every state tensor of the
    parameter's shape) by its cluster mean (0 on the zero entries), so that every weight of a cluster takes the
    same step from here on."""
    state = optimizer.state.get(param)
    if not state:
        return
    counts = cluster_sizes(shared)
    for value in state.values():
        if isinstance(value, Tensor) and value.shape == param.shape and value.is_floating_point():
            means = torch.nan_to_num(_cluster_means(value, shared, counts), nan=0.0)
            table = torch.cat([means, means.new_zeros(1)])
            value.copy_(table[shared.index].to(value.dtype))


@torch.no_grad()
def write_shared_(param: Tensor, shared: SharedWeight) -> None:
    """Write the codebook's values into ``param`` (zeros where there is no entry)."""
    param.copy_(shared_values(shared.codebook.to(param.device), shared.index).to(param.dtype))


@torch.no_grad()
def update_codebook_(param: Tensor, shared: SharedWeight, train: bool = True) -> SharedWeight:
    """After an optimizer step: the codebook read back from ``param`` and written to it again.

    With ``train``, each centroid becomes the mean of its weights (float64 sums: a cluster whose weights all
    took the same step gets exactly that value; an empty cluster keeps its centroid); without, the codebook is
    kept and the weights are reset to it. An entry that another phase set to exactly zero since (a pruning step)
    leaves its cluster for good: it becomes a zero entry. Returns the updated :class:`SharedWeight` (the index
    is updated in place).
    """
    index = shared.index
    dropped = (param == 0) & (index != shared.k)
    if bool(dropped.any()):
        index[dropped] = shared.k
    codebook = shared.codebook
    if train:
        means = _cluster_means(param, shared)
        codebook = torch.where(torch.isnan(means), codebook.double(), means).float()
    updated = SharedWeight(codebook, index)
    write_shared_(param, updated)
    return updated


# ----------------------------------------------------------------------------------------------- models
def _matches(name: str, patterns: Iterable[str]) -> str | None:
    """The first pattern matching the parameter ``name`` or its module's name (``name`` less ``.weight``)."""
    module = name.rsplit(".", 1)[0] if "." in name else name
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(module, pattern):
            return pattern
    return None


def check_bits_spec(bits: int | Mapping[str, int]) -> int | dict[str, int]:
    """``bits`` as given if valid: an int in 1..8, or a map ``{glob pattern: bits in 1..8}``."""
    if isinstance(bits, Mapping):
        if not bits:
            raise ValueError("`bits` as a map needs at least one `{pattern: bits}` entry.")
        return {str(p): check_bits(b, f"bits[{p!r}]") for p, b in bits.items()}
    return check_bits(bits)


def select_shared(
    named_params: Mapping[str, Tensor] | nn.Module,
    bits: int | Mapping[str, int],
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> dict[str, int]:
    """Which parameters are shared, and with how many bits: ``{parameter name: bits}`` in parameter order.

    The candidates are the floating-point parameters with at least two dimensions: the weights of linear,
    convolution, embedding and attention-projection layers (biases and norms stay float, as in Han et al.).
    With an int, every candidate takes it. With a map ``{glob pattern: bits}``, a candidate whose name
    (``"features.0.weight"``) or module name (``"features.0"``) matches a pattern takes the bits of the first
    that matches; the others stay float. ``include`` (when given) keeps only parameters matching one of its
    patterns, ``exclude`` drops those matching one of its.
    """
    params = dict(named_params.named_parameters()) if isinstance(named_params, nn.Module) else named_params
    spec = check_bits_spec(bits)
    include = list(include) if include is not None else None
    exclude = list(exclude or [])
    out: dict[str, int] = {}
    for name, p in params.items():
        if not p.is_floating_point() or p.dim() < 2:
            continue
        if isinstance(spec, dict):
            pattern = _matches(name, spec)
            if pattern is None:
                continue
            b = spec[pattern]
        else:
            b = spec
        if include is not None and _matches(name, include) is None:
            continue
        if _matches(name, exclude) is not None:
            continue
        out[name] = b
    return out


def unmatched_patterns(names: Iterable[str] | Mapping[str, Tensor], patterns: Iterable[str]) -> list[str]:
    """The ``patterns`` that match none of the parameter ``names`` (nor their modules); given the parameters
    themselves, only the candidates of :func:`select_shared` count."""
    if isinstance(names, Mapping):
        names = [n for n, p in names.items() if p.is_floating_point() and p.dim() >= 2]
    names = list(names)
    return [p for p in patterns if all(_matches(n, [p]) is None for n in names)]


@torch.no_grad()
def share_weights_(
    model: nn.Module,
    bits: int | Mapping[str, int],
    init: str = "linear",
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    max_iter: int = MAX_ITER,
    seed: int = 0,
) -> dict[str, SharedWeight]:
    """Cluster the selected parameters of ``model`` (:func:`select_shared`) and write the codebook values into
    them, in place (weight sharing after training, or the start of training with shared weights).

    Args:
        model: the network.
        bits: bits of every layer's codebook, or a ``{glob pattern: bits}`` map (see :func:`select_shared`).
        init: the k-means initialisation (:data:`INITS`).
        include: glob patterns of the parameters (or modules) to share; ``None``: all selected by ``bits``.
        exclude: glob patterns of parameters (or modules) left float.
        max_iter: Lloyd iterations at most.
        seed: the random source of ``init="random"`` (the i-th shared parameter draws with ``seed + i``).

    Returns:
        ``{parameter name: SharedWeight}`` on each parameter's device.

    Raises:
        ValueError: bad ``bits``/``init``, or a parameter with fewer non-zero weights than centroids.
    """
    check_init(init)
    params = dict(model.named_parameters())
    out: dict[str, SharedWeight] = {}
    for i, (name, b) in enumerate(select_shared(params, bits, include, exclude).items()):
        generator = torch.Generator().manual_seed(seed + i)
        shared = cluster_weight(params[name], b, init, max_iter, generator, name=name)
        write_shared_(params[name], shared)
        out[name] = shared
    return out


__all__ = [
    "BITS",
    "INITS",
    "KMeansResult",
    "SharedWeight",
    "assign",
    "boundaries",
    "centroid_gradient",
    "check_bits",
    "check_bits_spec",
    "check_init",
    "cluster_sizes",
    "cluster_weight",
    "freeze_gradients_",
    "init_centroids",
    "kmeans_1d",
    "select_shared",
    "share_gradients_",
    "share_weights_",
    "shared_values",
    "tie_optimizer_state_",
    "unmatched_patterns",
    "update_codebook_",
    "write_shared_",
]
