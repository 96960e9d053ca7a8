"""A user's GPyTorch prior for the exact GP on Pendulum-v1: an angle-periodic kernel
times an RBF, plus a linear trend.

Used by ``experiments/user_kernel_pendulum.toml``::

    [model]
    kind = "gp"
    kernel = "experiments/user_kernel_pendulum.py:make_kernel"
    mean = "experiments/user_kernel_pendulum.py:make_mean"

and runnable on its own (``python experiments/user_kernel_pendulum.py``): it fits the
GP on random Pendulum-v1 transitions, draws posterior functions and plans one CEM
step through them, printing the fitted prior and the plan.

Why this kernel. The natural prior for a pendulum is periodic in the angle ``theta``
times an RBF in ``(theta_dot, torque)``, plus a linear part for the torque and
gravity terms (``delta theta_dot = 0.75 sin(theta) + 0.15 u`` away from the speed
clip). Function draws along a trajectory need a random-feature map of the kernel,
and BoTorch 0.18's pathwise sampling has one only for ``RBFKernel`` and
``MaternKernel`` (in a ``ScaleKernel`` or not): ``PeriodicKernel``, ``ProductKernel``,
``AdditiveKernel`` and ``LinearKernel`` are refused with a ``ModelError``. So we
write the same prior in the terms it supports:

- *periodic x RBF*: Pendulum-v1 observes the angle as ``(cos theta, sin theta)``, and
  an RBF over that point on the circle is a periodic kernel in ``theta``
  (``|u - u'|^2 = 4 sin^2((theta - theta') / 2)``, GPyTorch's ``PeriodicKernel`` with
  period ``2 pi``); a product of RBFs over disjoint inputs is one ARD RBF over all of
  them. The factory gives the lengthscales and the amplitude Gamma priors (MAP-II
  rather than maximum likelihood), which the built-in ``"se"`` does not.
- *plus linear*: a ``LinearMean`` (a fitted linear trend in ``(obs, action)``)
  instead of a ``LinearKernel``; the GP models what the line leaves over.

Factories receive ``(input_dim, batch_shape)``: the GP is batched over the state
dimensions (``batch_shape = (obs_dim,)``), one set of hyperparameters per output.
"""

from __future__ import annotations

import torch
from gpytorch.kernels import RBFKernel, ScaleKernel
from gpytorch.means import LinearMean
from gpytorch.priors import GammaPrior

from bayes_mbrl.data import ReplayBuffer


def make_kernel(input_dim: int, batch_shape: torch.Size) -> ScaleKernel:
    """Periodic-in-angle x RBF kernel over normalized ``(cos, sin, theta_dot, torque)``."""
    base = RBFKernel(
        ard_num_dims=input_dim,
        batch_shape=batch_shape,
        lengthscale_prior=GammaPrior(2.0, 1.0),  # mode 1 (normalized input units)
    )
    base.lengthscale = torch.ones(*batch_shape, 1, input_dim)
    kernel = ScaleKernel(base, batch_shape=batch_shape, outputscale_prior=GammaPrior(2.0, 2.0))
    kernel.outputscale = torch.ones(batch_shape)
    return kernel


def make_mean(input_dim: int, batch_shape: torch.Size) -> LinearMean:
    """A linear trend in the inputs, per output, starting flat (the GP's constant mean)."""
    mean = LinearMean(input_dim, batch_shape=batch_shape)
    torch.nn.init.zeros_(mean.weights)
    torch.nn.init.zeros_(mean.bias)
    return mean


def collect(steps: int, seed: int) -> ReplayBuffer:
    """``steps`` Pendulum-v1 transitions under uniformly random torques."""
    import gymnasium

    env = gymnasium.make("Pendulum-v1")
    rng = torch.Generator().manual_seed(seed)
    buffer = ReplayBuffer(3, 1, steps)
    obs, _ = env.reset(seed=seed)
    zero = torch.zeros(1)
    for _ in range(steps):
        action = torch.rand(1, generator=rng) * 4 - 2
        nxt, _, term, trunc, _ = env.step(action.numpy())
        as_row = torch.as_tensor(obs, dtype=torch.float32)[None]
        buffer.add(as_row, action[None], zero, torch.as_tensor(nxt)[None].float(), zero, zero)
        obs = env.reset()[0] if term or trunc else nxt
    return buffer


def main() -> None:
    """Fit the user's prior and the built-in ``"se"`` on random Pendulum-v1 transitions,
    compare held-out predictions, then plan one CEM step through function draws."""
    from bayes_mbrl.envs.rewards import pendulum_reward
    from bayes_mbrl.models.gp import ExactGPDynamics
    from bayes_mbrl.planning.optimizers import CEMPlanner
    from bayes_mbrl.planning.rollout import RolloutEvaluator

    torch.set_num_threads(1)
    train, test = collect(400, seed=0), collect(200, seed=1).all()
    models = {
        "user": ExactGPDynamics(3, 1, kernel=make_kernel, mean=make_mean, training_steps=100),
        "se": ExactGPDynamics(3, 1, kernel="se", training_steps=100),
    }
    for name, model in models.items():
        model.fit(train, torch.Generator().manual_seed(0))
        pred = model.predict(test.obs, test.action)
        rmse = (pred.mean - test.next_obs).square().mean(0).sqrt()
        lpd = model.log_predictive_density(test.obs, test.action, test.next_obs).mean()
        print(
            f"{name:4s} {model.kernel}: held-out RMSE per state {rmse.numpy().round(5)}, "
            f"mean log density {float(lpd):.2f}"
        )
    model = models["user"]
    evaluator = RolloutEvaluator(model, pendulum_reward, horizon=15, particles=5)
    planner = CEMPlanner(-2 * torch.ones(1), 2 * torch.ones(1), 15, population=100, iterations=3)
    plan = planner.plan(evaluator.scorer(torch.tensor([-1.0, 0.0, 0.0])))  # hanging down
    print("first planned torques from hanging down:", plan.actions[:5, 0].numpy().round(2))


if __name__ == "__main__":
    main()
