"""Does the Pendulum learning curve hold with bfloat16 planning numerics?

On a CPU without native bf16 (this project's AVX2 machines) real bf16 matmuls run
at a few GFLOP/s, so a full run with ``planner.precision = "bfloat16"`` would take
hours. This script answers the numerical question instead: it runs the default
experiment with every planning forward pass rounded to bf16 exactly where a bf16
kernel rounds (inputs, weights and biases, each layer's matmul output and each
activation output), while the arithmetic runs in fp32 kernels. States and returns
stay in fp32, as with ``precision = "bfloat16"``.

Before the run it checks the emulation against the real bf16 path
(``EnsembleFunctionSample.with_compute_dtype(torch.bfloat16)``) on a batch and
prints the largest difference.

Run: ``python experiments/bf16_emulated_run.py --seed 0 --out runs/bf16-emulated-seed0``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from bayes_mbrl.config import load_config
from bayes_mbrl.experiment import run_experiment
from bayes_mbrl.models import ensemble
from bayes_mbrl.models.ensemble import EnsembleFunctionSample, ProbabilisticEnsemble


def bf16(t: Tensor) -> Tensor:
    """Round to the nearest bf16 value, keep fp32 storage."""
    return t.to(torch.bfloat16).float()


class EmulatedBF16FunctionSample(EnsembleFunctionSample):
    """The ensemble's planning forward pass with bf16 rounding, computed in fp32."""

    def _head(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        x = bf16(torch.cat([obs, action], dim=-1))
        act = ensemble._INPLACE_ACTIVATIONS[self.activation]
        for w, b in zip(self.weights, self.biases, strict=True):
            x = bf16(act(bf16(torch.baddbmm(bf16(b), x, bf16(w)))))
        out = torch.baddbmm(bf16(self.out_bias_t), bf16(self.out_weight_t), x.transpose(1, 2))
        x = bf16(out).transpose(1, 2)
        mean, logvar = x[..., : self.obs_dim], x[..., self.obs_dim :]
        logvar = ensemble._soft_bound_logvar(logvar, self.min_logvar, self.max_logvar)
        return mean, 0.5 * logvar + self.log_delta_std


_original_sample_functions = ProbabilisticEnsemble.sample_functions


def emulated_sample_functions(
    self: ProbabilisticEnsemble, n: int, generator: torch.Generator | None = None
) -> EnsembleFunctionSample:
    f = _original_sample_functions(self, n, generator)
    assert isinstance(f, EnsembleFunctionSample) and f.compute_dtype == torch.float32
    f.__class__ = EmulatedBF16FunctionSample  # same fields, bf16-rounding forward pass
    return f


def check_against_real_bf16() -> None:
    """Largest difference between the emulation, real bf16 and fp32 on a random batch."""
    from bayes_mbrl.data import ReplayBuffer

    g = torch.Generator().manual_seed(0)
    n = 300
    th = torch.rand(n, generator=g) * 6.28 - 3.14
    obs = torch.stack([th.cos(), th.sin(), torch.randn(n, generator=g) * 3], -1)
    action = torch.rand(n, 1, generator=g) * 4 - 2
    buf = ReplayBuffer(3, 1, n)
    nxt = obs + 0.1 * torch.randn(n, 3, generator=g)
    buf.add(obs, action, torch.zeros(n), nxt, torch.zeros(n), torch.zeros(n))
    model = ProbabilisticEnsemble(3, 1, max_epochs=5)
    model.fit(buf, g)
    f32 = _original_sample_functions(model, 5)
    real = f32.with_compute_dtype(torch.bfloat16)
    emu = emulated_sample_functions(model, 5)
    o, a = obs[:200].expand(5, -1, -1), action[:200].expand(5, -1, -1)
    m32, mreal, memu = f32.mean(o, a), real.mean(o, a), emu.mean(o, a)
    print(
        f"next-state mean, max |emulated - real bf16| = {(memu - mreal).abs().max():.2e}, "
        f"max |real bf16 - fp32| = {(mreal - m32).abs().max():.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    check_against_real_bf16()
    ProbabilisticEnsemble.sample_functions = emulated_sample_functions  # type: ignore[method-assign]
    config = load_config(None, ["experiment.progress=false"], seed=args.seed)
    result = run_experiment(config, args.out)
    print("returns:", ", ".join(f"{r:.1f}" for r in result.returns))


if __name__ == "__main__":
    main()
