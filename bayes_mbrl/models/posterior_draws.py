"""One store of MCMC posterior draws, shared by every family sampled with NUTS.

:class:`PosteriorDraws` holds named sites' draws chain-major,
``(num_chains * draws_per_chain, *shape)`` per site, and does what every NUTS family
needs around them: run whole chains one after another (each from its own start, e.g.
a MAP fit), check the draws are finite before replacing the previous ones, pick
``n`` draws for planning (without replacement while ``n`` does not exceed the draws,
else with), thin evenly within each chain for analysis (the chain structure is kept
for ArviZ's ``r_hat``), and round-trip through a ``state_dict``.

:func:`run_nuts_chain` runs one chain of Pyro's NUTS (``MCMC`` with one chain, no
progress bar) and reports each iteration to a ``progress(step, loss, nan)`` callback,
the loss being the potential energy per transition of the current state.

Shapes: ``C`` chains, ``S`` draws per chain, ``T = C * S`` draws in all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models.base import ProgressFn

__all__ = ["PosteriorDraws", "run_nuts_chain"]

Draws = dict[str, Tensor]


class PosteriorDraws:
    """Posterior draws of named sites, chain-major.

    Attributes:
        samples: site name -> ``(T, *shape)`` draws, chain ``c`` in rows
            ``c * S ... (c + 1) * S - 1``; empty before the first run.
        num_chains: ``C``.

    Example:
        >>> store = PosteriorDraws()
        >>> store.set_chains([{"a": torch.zeros(3)}, {"a": torch.ones(3)}])
        >>> store.thinned_index(4).tolist()
        [0, 2, 3, 5]
    """

    def __init__(self, num_chains: int = 1) -> None:
        self.samples: Draws = {}
        self.num_chains = num_chains

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
        chain: Callable[[int], Draws],
        names: Sequence[str] | None = None,
        fix: str = "",
    ) -> None:
        """Run ``chain(c)`` for ``c = 0 .. num_chains - 1``, one after another, and store
        the draws (see :meth:`set_chains`; on an error the previous draws are kept).

        Args:
            num_chains: ``C``.
            chain: runs chain ``c`` from its own start and returns its ``(S, *shape)`` draws.
            names: sites to keep, in this order (default: the first chain's).
            fix: what the user can do about non-finite draws, for the error message.
        """
        self.set_chains([chain(c) for c in range(num_chains)], names, fix)

    def set_chains(
        self, chains: Sequence[Draws], names: Sequence[str] | None = None, fix: str = ""
    ) -> None:
        """Store the chains' draws chain-major, after checking they are finite.

        Args:
            chains: per chain, site name -> ``(S, *shape)``.
            names: sites to keep, in this order (default: the first chain's).
            fix: what the user can do about non-finite draws, for the error message.

        Raises:
            ModelError: a site has non-finite draws (the previous draws are kept).
        """
        keys = list(chains[0]) if names is None else list(names)
        samples = {k: torch.cat([c[k] for c in chains], 0) for k in keys}
        for name, v in samples.items():
            if not bool(torch.isfinite(v).all()):
                raise ModelError(
                    f"NUTS produced non-finite samples of '{name}'; the previous samples were "
                    f"kept. {fix}".rstrip()
                )
        self.samples, self.num_chains = samples, len(chains)

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

    def _require(self) -> int:
        if not self.samples:
            raise ModelError("no posterior draws are stored; fit the model with NUTS first")
        return self.total

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """``{"samples": {site: (T, *shape)}, "num_chains": C}`` (weights-only safe)."""
        return {
            "samples": {k: v.clone() for k, v in self.samples.items()},
            "num_chains": self.num_chains,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ValueError: the entries are not tensors with the same number of draws, a
                multiple of the chains (the store is left unchanged).
        """
        samples, num_chains = state["samples"], int(state["num_chains"])
        if not isinstance(samples, dict) or not all(
            isinstance(v, Tensor) and v.dim() >= 1 for v in samples.values()
        ):
            raise ValueError("posterior draws must be a dict of tensors with a leading draw axis")
        sizes = {int(v.shape[0]) for v in samples.values()}
        if num_chains < 1 or len(sizes) > 1 or any(s % num_chains for s in sizes):
            raise ValueError(
                f"posterior draws of sizes {sorted(sizes)} do not split into {num_chains} chains"
            )
        self.samples = {k: v.clone() for k, v in samples.items()}
        self.num_chains = num_chains


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
) -> Draws:
    """Run one chain of a Pyro NUTS (or HMC) ``kernel``; return its draws.

    Args:
        kernel: a ``pyro.infer.NUTS``.
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
        Site name -> ``(S, *shape)`` draws (detached).
    """
    from pyro.infer import MCMC

    def hook_fn(k: Any, _params: Any, stage: str, i: int) -> None:
        if hook is not None:
            hook(k, stage, i)
        if progress is not None:
            energy = getattr(k, "_potential_energy_last", None)
            loss = float(energy) / num_transitions if energy is not None else math.nan
            offset = warmup_steps if stage.startswith("Sample") else 0
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
    mcmc.run(*args)
    return {k: v.detach() for k, v in mcmc.get_samples().items()}
