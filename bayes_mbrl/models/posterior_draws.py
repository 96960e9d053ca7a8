"""One store of MCMC posterior draws, shared by every family sampled with NUTS.

:class:`PosteriorDraws` holds named sites' draws chain-major,
``(num_chains * draws_per_chain, *shape)`` per site, and does what every NUTS family
needs around them: run whole chains one after another (each from its own start, e.g.
a MAP fit), check the draws are finite before replacing the previous ones, pick
``n`` draws for planning (without replacement while ``n`` does not exceed the draws,
else with), thin evenly within each chain for analysis (the chain structure is kept
for ArviZ's ``r_hat``), and round-trip through a ``state_dict``. Next to each draw it
keeps the sampler's statistics of the iteration that produced it (:data:`SAMPLE_STATS`,
ArviZ's ``sample_stats`` names), and per chain a summary of them
(:meth:`PosteriorDraws.chain_diagnostics`: step size, acceptance, divergences, tree
depth, leapfrog steps, seconds).

:func:`run_nuts_chain` runs one chain of Pyro's NUTS (``MCMC`` with one chain, no
progress bar), reports each iteration to a ``progress(step, loss, nan)`` callback,
the loss being the potential energy per transition of the current state, and records
the statistics of every sampling iteration. Pyro's NUTS keeps none of them per
iteration, so they are read after each iteration from what the kernel does expose:
its step size, its divergence list, the running mean of its acceptance probability
(``a_i = i m_i - (i - 1) m_{i-1}``) and the calls of its potential function
(one per leapfrog step).

Shapes: ``C`` chains, ``S`` draws per chain, ``T = C * S`` draws in all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models.base import ProgressFn

__all__ = ["SAMPLE_STATS", "NutsChain", "PosteriorDraws", "run_nuts_chain"]

Draws = dict[str, Tensor]

#: per draw, the statistics :func:`run_nuts_chain` records of the sampling iteration
#: that produced it, under the names ArviZ gives them in ``sample_stats``:
#: ``lp`` (minus the potential energy: the log joint density of the unconstrained
#: latents, Jacobians included), ``acceptance_rate`` (NUTS: the mean Metropolis
#: acceptance probability over the trajectory's states), ``step_size``, ``tree_depth``
#: (doublings of the trajectory: ``n_steps <= 2**tree_depth - 1``, NUTS only),
#: ``n_steps`` (leapfrog steps) and ``diverging`` (the trajectory diverged; bool)
SAMPLE_STATS = ("lp", "acceptance_rate", "step_size", "tree_depth", "n_steps", "diverging")


class NutsChain(NamedTuple):
    """One chain's draws and sampler statistics.

    Attributes:
        draws: site name -> ``(S, *shape)``.
        stats: statistic name (:data:`SAMPLE_STATS`) -> ``(S,)``.
    """

    draws: Draws
    stats: dict[str, Tensor]


class PosteriorDraws:
    """Posterior draws of named sites, chain-major.

    Attributes:
        samples: site name -> ``(T, *shape)`` draws, chain ``c`` in rows
            ``c * S ... (c + 1) * S - 1``; empty before the first run.
        stats: sampler statistic (:data:`SAMPLE_STATS`) -> ``(T,)``, laid out as the
            draws; empty when the chains were stored without them.
        num_chains: ``C``.
        run_diagnostics: per chain of the last :meth:`run_chains`, the
            :func:`chain_diagnostics` of its statistics and its wall ``seconds``; kept
            also when that run's draws were refused (to see why). After
            :meth:`load_state_dict`: those of the loaded statistics, without seconds.

    Examples:
        >>> store = PosteriorDraws()
        >>> store.set_chains([{"a": torch.zeros(3)}, {"a": torch.ones(3)}])
        >>> store.thinned_index(4).tolist()
        [0, 2, 3, 5]
    """

    def __init__(self, num_chains: int = 1) -> None:
        self.samples: Draws = {}
        self.stats: dict[str, Tensor] = {}
        self.num_chains = num_chains
        self.run_diagnostics: list[dict[str, float]] = []

    # ------------------------------------------------------------------ sizes
    def __bool__(self) -> bool:
        return bool(self.samples)

    @property
    def total(self) -> int:
        """``T``, the number of draws (0 when empty)."""
        return int(next(iter(self.samples.values())).shape[0]) if self.samples else 0

    @property
    def per_chain(self) -> int:
        """``S``, draws per chain."""
        return self.total // self.num_chains

    # ---------------------------------------------------------------- filling
    def run_chains(
        self,
        num_chains: int,
        chain: Callable[[int], NutsChain | Draws],
        names: Sequence[str] | None = None,
        fix: str = "",
    ) -> None:
        """Run ``chain(c)`` for ``c = 0 .. num_chains - 1``, one after another, and store
        the draws and statistics (see :meth:`set_chains`; on an error the previous draws
        are kept). :attr:`run_diagnostics` summarizes each chain, with its wall time.

        Args:
            num_chains: ``C``.
            chain: runs chain ``c`` from its own start and returns its ``(S, *shape)``
                draws, with their statistics (:class:`NutsChain`, e.g. from
                :func:`run_nuts_chain`) or without.
            names: sites to keep, in this order (default: the first chain's).
            fix: what the user can do about non-finite draws, for the error message.
        """
        runs: list[NutsChain] = []
        self.run_diagnostics = []
        for c in range(num_chains):
            start = time.perf_counter()
            run = chain(c)
            run = run if isinstance(run, NutsChain) else NutsChain(run, {})
            runs.append(run)
            self.run_diagnostics.append(
                {**chain_diagnostics(run.stats), "seconds": time.perf_counter() - start}
            )
        self.set_chains([r.draws for r in runs], names, fix, [r.stats for r in runs])

    def set_chains(
        self,
        chains: Sequence[Draws],
        names: Sequence[str] | None = None,
        fix: str = "",
        stats: Sequence[dict[str, Tensor]] | None = None,
    ) -> None:
        """Store the chains' draws (and statistics) chain-major, after checking the draws
        are finite.

        Args:
            chains: per chain, site name -> ``(S, *shape)``.
            names: sites to keep, in this order (default: the first chain's).
            fix: what the user can do about non-finite draws, for the error message.
            stats: per chain, statistic -> ``(S,)``; kept only when every chain has
                the same ones (None: none).

        Raises:
            ModelError: a site has non-finite draws (the previous draws are kept).
            ValueError: a statistic does not have one value per draw.
        """
        keys = list(chains[0]) if names is None else list(names)
        samples = {k: torch.cat([c[k] for c in chains], 0) for k in keys}
        for name, v in samples.items():
            if not bool(torch.isfinite(v).all()):
                raise ModelError(
                    f"NUTS produced non-finite samples of '{name}'; the previous samples were "
                    f"kept. {fix}".rstrip()
                )
        merged: dict[str, Tensor] = {}
        if stats and len(stats) == len(chains) and all(set(s) == set(stats[0]) for s in stats):
            merged = {k: torch.cat([s[k].reshape(-1) for s in stats]) for k in stats[0]}
        total = next(iter(samples.values())).shape[0] if samples else 0
        for name, v in merged.items():
            if v.shape[0] != total:
                raise ValueError(
                    f"sampler statistic {name!r} has {v.shape[0]} values for {total} draws"
                )
        self.samples, self.stats, self.num_chains = samples, merged, len(chains)

    # --------------------------------------------------------------- choosing
    def draw_index(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n,)`` indices of ``n`` random draws: without replacement while ``n <= T``,
        with replacement beyond.

        Raises:
            DataError: ``n < 1``.
            ModelError: no draws are stored.
        """
        if n < 1:
            raise DataError(f"number of functions must be >= 1, got {n}")
        total = self._require()
        if n <= total:
            return torch.randperm(total, generator=generator)[:n]
        return torch.randint(total, (n,), generator=generator)

    def thinned_index(self, num_draws: int | None = None) -> Tensor:
        """Chain-major indices of evenly spaced draws within each chain.

        ``num_draws=None`` keeps every draw; otherwise ``max(1, min(S, num_draws // C))``
        per chain, at ``round(linspace(0, S - 1, keep))`` within it.

        Returns:
            ``(C * keep,)`` indices, chain by chain.
        """
        self._require()
        per_chain = self.per_chain
        keep = (
            per_chain if num_draws is None else max(1, min(per_chain, num_draws // self.num_chains))
        )
        within = torch.linspace(0, per_chain - 1, keep).round().long()
        return (torch.arange(self.num_chains)[:, None] * per_chain + within).reshape(-1)

    def take(self, index: Tensor) -> Draws:
        """Site name -> ``(len(index), *shape)`` draws at ``index``."""
        return {k: v[index] for k, v in self.samples.items()}

    def take_stats(self, index: Tensor) -> dict[str, Tensor]:
        """Statistic -> ``(len(index),)``: the sampler statistics of the draws at ``index``
        (empty when none are stored)."""
        return {k: v[index] for k, v in self.stats.items()}

    def chain_diagnostics(self) -> list[dict[str, float]]:
        """Per chain, :func:`chain_diagnostics` of its stored statistics."""
        per_chain = self.per_chain
        return [
            chain_diagnostics(
                {k: v[c * per_chain : (c + 1) * per_chain] for k, v in self.stats.items()}
            )
            for c in range(self.num_chains if self.samples else 0)
        ]

    def _require(self) -> int:
        if not self.samples:
            raise ModelError("no posterior draws are stored; fit the model with NUTS first")
        return self.total

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """``{"samples": {site: (T, *shape)}, "stats": {statistic: (T,)}, "num_chains": C}``
        (weights-only safe)."""
        return {
            "samples": {k: v.clone() for k, v in self.samples.items()},
            "stats": {k: v.clone() for k, v in self.stats.items()},
            "num_chains": self.num_chains,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (one without ``"stats"``, as older checkpoints,
        restores the draws without statistics).

        Raises:
            ValueError: the entries are not tensors with the same number of draws, a
                multiple of the chains (the store is left unchanged).
        """
        samples, num_chains = state["samples"], int(state["num_chains"])
        stats = state.get("stats") or {}
        if not isinstance(samples, dict) or not all(
            isinstance(v, Tensor) and v.dim() >= 1 for v in samples.values()
        ):
            raise ValueError("posterior draws must be a dict of tensors with a leading draw axis")
        if not isinstance(stats, dict) or not all(
            isinstance(v, Tensor) and v.dim() == 1 for v in stats.values()
        ):
            raise ValueError("sampler statistics must be a dict of 1-D tensors")
        sizes = {int(v.shape[0]) for v in [*samples.values(), *stats.values()]}
        if num_chains < 1 or len(sizes) > 1 or any(s % num_chains for s in sizes):
            raise ValueError(
                f"posterior draws of sizes {sorted(sizes)} do not split into {num_chains} chains"
            )
        self.samples = {k: v.clone() for k, v in samples.items()}
        self.stats = {k: v.clone() for k, v in stats.items()}
        self.num_chains = num_chains
        self.run_diagnostics = self.chain_diagnostics()  # the wall times are not saved


def chain_diagnostics(stats: dict[str, Tensor]) -> dict[str, float]:
    """One chain's summary of its per-draw statistics (those it has).

    Args:
        stats: statistic (:data:`SAMPLE_STATS`) -> ``(S,)``.

    Returns:
        ``step_size`` (the last: it is fixed after warm-up), ``accept_prob`` (mean
        ``acceptance_rate``), ``divergences`` (count of ``diverging``),
        ``leapfrog_per_sample`` (mean ``n_steps``), ``tree_depth`` (mean) and
        ``tree_depth_max`` (the deepest tree: at the kernel's ``max_tree_depth`` the
        trajectories were cut short), as floats.
    """
    out: dict[str, float] = {}
    if "step_size" in stats and stats["step_size"].numel():
        out["step_size"] = float(stats["step_size"][-1])
    if "acceptance_rate" in stats:
        out["accept_prob"] = float(stats["acceptance_rate"].double().mean())
    if "diverging" in stats:
        out["divergences"] = float(stats["diverging"].sum())
    if "n_steps" in stats:
        out["leapfrog_per_sample"] = float(stats["n_steps"].double().mean())
    if "tree_depth" in stats and stats["tree_depth"].numel():
        depth = stats["tree_depth"]
        out["tree_depth"] = float(depth.double().mean())
        out["tree_depth_max"] = float(depth.max())
    return out


def run_nuts_chain(
    kernel: Any,
    *,
    num_samples: int,
    warmup_steps: int,
    args: tuple[Any, ...] = (),
    initial_params: dict[str, Tensor] | None = None,
    progress: ProgressFn | None = None,
    first_step: int = 0,
    num_transitions: int = 1,
    hook: Callable[[Any, str, int], None] | None = None,
) -> NutsChain:
    """Run one chain of a Pyro NUTS (or HMC) ``kernel``; return its draws and statistics.

    Args:
        kernel: a ``pyro.infer.NUTS`` (or ``HMC``), used for this one run.
        num_samples: draws kept, ``S``.
        warmup_steps: adaptation steps before them.
        args: arguments of the model (for a kernel built on a model).
        initial_params: where the chain starts (unconstrained sites), or None for the
            kernel's ``init_strategy``.
        progress: called after every iteration as ``progress(first_step + i, energy, nan)``,
            ``i`` counting warm-up and sampling iterations of this chain, ``energy`` the
            potential energy of the current state divided by ``num_transitions``.
        first_step: the step number of this chain's first iteration.
        num_transitions: scales the reported energy to a per-transition loss.
        hook: also called as ``hook(kernel, stage, i)`` (``stage`` ``"Warmup"`` or
            ``"Sample"``), e.g. to read adaptation diagnostics.

    Returns:
        Site name -> ``(S, *shape)`` draws (detached), and per draw the statistics of
        its sampling iteration (:data:`SAMPLE_STATS`; ``tree_depth`` for NUTS only).
    """
    from pyro.infer import MCMC, NUTS

    leapfrog = [0]  # potential evaluations: one per leapfrog step once the chain runs
    setup, own_setup, uncounted = kernel.setup, vars(kernel).get("setup"), [kernel.potential_fn]

    def counting_setup(*setup_args: Any, **kwargs: Any) -> None:
        # a kernel built on a model makes its potential in setup: wrap it after
        setup(*setup_args, **kwargs)
        potential = uncounted[0] = kernel.potential_fn

        def counted(params: dict[str, Tensor]) -> Tensor:
            leapfrog[0] += 1
            return potential(params)

        kernel.potential_fn = counted

    kernel.setup = counting_setup  # this kernel only, for this run (restored below)
    rows: list[tuple[float, float, float, int, bool]] = []
    last = {"mean_accept": 0.0, "calls": 0, "divergences": 0}

    def record(k: Any, i: int) -> None:
        """Statistics of sampling iteration ``i``, read right after it."""
        n = i + 1  # the kernel's running mean of the acceptance probability counts n
        mean = float(k._mean_accept_prob)
        accept = min(max(n * mean - (n - 1) * last["mean_accept"], 0.0), 1.0)
        divergences = len(k.diagnostics()["divergences"])
        energy = getattr(k, "_potential_energy_last", None)
        lp = -float(energy) if energy is not None else math.nan
        steps = leapfrog[0] - int(last["calls"])
        rows.append((lp, accept, float(k.step_size), steps, divergences > last["divergences"]))
        last.update(mean_accept=mean, calls=leapfrog[0], divergences=divergences)

    def hook_fn(k: Any, _params: Any, stage: str, i: int) -> None:
        sampling = stage.startswith("Sample")
        if sampling:
            record(k, i)
        else:
            last["calls"] = leapfrog[0]
        if hook is not None:
            hook(k, stage, i)
        if progress is not None:
            energy = getattr(k, "_potential_energy_last", None)
            loss = float(energy) / num_transitions if energy is not None else math.nan
            offset = warmup_steps if sampling else 0
            progress(first_step + offset + i, loss, math.nan)

    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        num_chains=1,
        initial_params=initial_params,
        disable_progbar=True,
        hook_fn=hook_fn,
    )
    try:
        mcmc.run(*args)
    finally:  # the kernel as it was: its class's setup, the potential it built
        if own_setup is None:
            del kernel.setup
        else:
            kernel.setup = own_setup
        kernel.potential_fn = uncounted[0]
    draws = {k: v.detach() for k, v in mcmc.get_samples().items()}
    lp, accept, step_size, n_steps, diverging = zip(*rows, strict=True) if rows else ([],) * 5
    stats = {
        "lp": torch.tensor(lp, dtype=torch.float64),
        "acceptance_rate": torch.tensor(accept, dtype=torch.float64),
        "step_size": torch.tensor(step_size, dtype=torch.float64),
        "n_steps": torch.tensor(n_steps, dtype=torch.int64),
        "diverging": torch.tensor(diverging, dtype=torch.bool),
    }
    if isinstance(kernel, NUTS):  # a tree of depth d has at most 2**d - 1 leapfrog steps
        stats["tree_depth"] = torch.tensor([int(n).bit_length() for n in n_steps])
    return NutsChain(draws, {k: stats[k] for k in SAMPLE_STATS if k in stats})
