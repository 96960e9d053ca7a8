"""The latent model's four encoders on the pixel pendulum, at one data budget.

Collects ``--episodes`` random-policy episodes of ``bayes_mbrl/PendulumPixels-v0``
(32 x 32 grayscale frames, flattened) plus ``--test-episodes`` held-out ones, recording
the true state ``info["state"] = (theta, theta_dot)`` of every frame for evaluation
only. For each encoder (filtering, smoothing, single_step, deterministic) it fits a
:class:`~bayes_mbrl.models.latent.model.LatentStateSpaceModel` (convolutional encoder
and decoder, ``--latent-dim`` latent, 5 transition members, ``--steps`` gradient
steps) on the training episodes and reports, on the held-out episodes:

* ``elbo_per_step``: the model's ELBO of the observations (no reward site), nats per
  frame. For ``filtering`` it is the filtering bound, a sum of one-step bounds, not
  the sequence ELBO of the other three: compare it across encoders with care (also
  per episode and its median, as a few samples can be heavy-tailed);
* ``lppd_per_step``: the one-step filter-predictive log-density of the next frame,
  averaged over members (``log mean_f p_f(o_{t+1} | o_{1:t})``, a particle estimate,
  :func:`~bayes_mbrl.models.latent.diagnostics.pointwise_log_likelihood`), the same
  quantity for every encoder, on ``--lppd-windows`` windows;
* ``mse_h1``, ``mse_h10``: open-loop MSE per pixel of the frame 1 and 10 steps after
  ``--context`` filtered frames (and ``mse_h5``), with the epistemic variance across
  members;
* ``probe_r2``: R^2 of a linear read-out of ``(cos theta, sin theta, theta_dot)`` from
  the encoder's posterior means, fitted on the training episodes, scored on the
  held-out ones; ``probe_r2_quadratic``: the same read-out from the means and their
  pairwise products ``z_i z_j`` (is the state there, but curved?);
* ``fit_seconds`` and the time per gradient step;

and, once, ``baseline_mse_mean_frame``: the MSE of predicting the training episodes'
mean frame (a model that has not learned the rod yet scores about this).

Writes ``--out`` (JSON), the same path with ``.md`` (a Markdown table) and, per
encoder, ``reconstructions.png``, ``open_loop.png`` and ``metrics.json`` under
``--figures`` (default: next to ``--out``, ``<stem>_figures/<encoder>/``).

    python experiments/latent_pixels.py --episodes 20 --steps 1500 \\
        --out experiments/latent_pixels.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import torch
from torch import Tensor

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.envs import PENDULUM_PIXELS_ID, get_task, make_env
from bayes_mbrl.models.latent import ENCODERS, LatentStateSpaceModel
from bayes_mbrl.models.latent import diagnostics as diag

__all__ = ["Episodes", "collect", "evaluate", "main", "markdown_table"]


class Episodes:
    """Equal-length episodes, batch-first.

    Attributes:
        obs: ``(N, T, 1024)`` frames in ``[0, 1]``.
        action: ``(N, T, 1)``.
        reward: ``(N, T)``.
        state: ``(N, T, 2)`` true ``(theta, theta_dot)`` of each frame.
        last_obs: ``(N, 1024)`` the frame after the last action.
    """

    def __init__(
        self, obs: Tensor, action: Tensor, reward: Tensor, state: Tensor, last_obs: Tensor
    ) -> None:
        self.obs, self.action, self.reward, self.state = obs, action, reward, state
        self.last_obs = last_obs

    def buffer(self) -> ReplayBuffer:
        """The episodes as transitions (each ends truncated), in order."""
        n, t_len, do = self.obs.shape
        buf = ReplayBuffer(do, self.action.shape[-1], n * t_len)
        nxt = torch.cat([self.obs[:, 1:], self.last_obs[:, None]], dim=1)
        trunc = torch.zeros(n, t_len, dtype=torch.bool)
        trunc[:, -1] = True
        buf.add(
            self.obs.reshape(n * t_len, do),
            self.action.reshape(n * t_len, -1),
            self.reward.reshape(-1),
            nxt.reshape(n * t_len, do),
            torch.zeros(n * t_len, dtype=torch.bool),
            trunc.reshape(-1),
        )
        return buf


def collect(num_episodes: int, length: int, seed: int) -> Episodes:
    """Random-policy episodes of the pixel pendulum (env seeds ``seed + i``, actions
    from the action space seeded with ``seed``)."""
    env = make_env(PENDULUM_PIXELS_ID, max_episode_steps=length)
    env.action_space.seed(seed)
    obs, acts, rews, states, last = [], [], [], [], []
    for i in range(num_episodes):
        o, info = env.reset(seed=seed + i)
        eo, ea, er, es = [], [], [], []
        for _ in range(length):
            a = env.action_space.sample()
            eo.append(np.asarray(o, dtype=np.float32))
            es.append(np.asarray(info["state"], dtype=np.float64))
            o, r, terminated, _truncated, info = env.step(a)
            ea.append(np.asarray(a, dtype=np.float32))
            er.append(float(r))
            if terminated:
                raise RuntimeError("the pendulum does not terminate; got terminated=True")
        obs.append(np.stack(eo))
        acts.append(np.stack(ea))
        rews.append(np.asarray(er, dtype=np.float32))
        states.append(np.stack(es))
        last.append(np.asarray(o, dtype=np.float32))
    env.close()
    return Episodes(
        torch.from_numpy(np.stack(obs)),
        torch.from_numpy(np.stack(acts)).reshape(num_episodes, length, -1),
        torch.from_numpy(np.stack(rews)),
        torch.from_numpy(np.stack(states)),
        torch.from_numpy(np.stack(last)),
    )


def _windows(ep: Episodes, length: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows of ``length`` steps of every episode."""
    t_len = ep.obs.shape[1]
    starts = range(0, t_len - length + 1, length)
    obs = torch.cat([ep.obs[:, s : s + length] for s in starts])
    act = torch.cat([ep.action[:, s : s + length] for s in starts])
    return obs, act


def evaluate(
    model: LatentStateSpaceModel,
    train: Episodes,
    test: Episodes,
    context: int,
    elbo_samples: int,
    lppd_windows: int,
    lppd_particles: int,
    figures: Path,
) -> dict[str, Any]:
    """The held-out metrics of one fitted model (see the module doc)."""
    row: dict[str, Any] = {}
    n, t_len = test.obs.shape[:2]
    start = time.perf_counter()
    elbo = model.elbo(test.obs, test.action, None, num_samples=elbo_samples)
    row["elbo_per_step"] = float(elbo.sum()) / (n * t_len)
    # per episode too: one heavy-tailed Monte Carlo sample can drag the mean down
    row["elbo_per_step_median"] = float(elbo.median()) / t_len
    row["elbo_per_step_by_episode"] = (elbo / t_len).tolist()
    row["elbo_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    win_obs, win_act = _windows(test, context + 10)
    summary = diag.open_loop_summary(model, win_obs, win_act, context, [1, 5, 10])
    for h in (1, 5, 10):
        row[f"mse_h{h}"] = summary[h]["mse"]
        row[f"epistemic_var_h{h}"] = summary[h]["epistemic_var"]
    row["aleatoric_var"] = summary[1]["aleatoric_var"]
    row["open_loop_windows"] = int(win_obs.shape[0])
    row["open_loop_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    lp_obs, lp_act = win_obs[:lppd_windows], win_act[:lppd_windows]
    ll = diag.pointwise_log_likelihood(model, lp_obs, lp_act, lppd_particles)
    lppd = torch.logsumexp(ll, 0) - math.log(ll.shape[0])
    row["lppd_per_step"] = float(lppd.mean())
    row["lppd_transitions"] = int(lppd.numel())
    row["lppd_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    with torch.no_grad():
        f_train, _ = model.posterior_marginals(train.obs, train.action)
        f_test, _ = model.posterior_marginals(test.obs, test.action)
    dz = model.latent_dim
    r2 = diag.linear_probe(
        f_train.reshape(-1, dz),
        diag.state_targets(train.state).reshape(-1, 3),
        f_test.reshape(-1, dz),
        diag.state_targets(test.state).reshape(-1, 3),
    )
    row["probe_r2"] = dict(zip(diag.STATE_TARGETS, r2.tolist(), strict=True))
    r2q = diag.linear_probe(
        quadratic_features(f_train.reshape(-1, dz)),
        diag.state_targets(train.state).reshape(-1, 3),
        quadratic_features(f_test.reshape(-1, dz)),
        diag.state_targets(test.state).reshape(-1, 3),
    )
    row["probe_r2_quadratic"] = dict(zip(diag.STATE_TARGETS, r2q.tolist(), strict=True))
    row["probe_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    report = diag.write_diagnostics(
        model, test.buffer(), figures, states=test.state.reshape(-1, 2), context=context
    )
    row["diagnostics_seconds"] = time.perf_counter() - start
    row["figures"] = report["files"]
    return row


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:.{digits}g}"
    return str(x)


def markdown_table(result: dict[str, Any]) -> str:
    """The per-encoder metrics as a Markdown table, with the run's configuration."""
    cfg = result["config"]
    lines = [
        f"# Latent model encoders on {PENDULUM_PIXELS_ID}",
        "",
        f"{cfg['episodes']} random-policy episodes x {cfg['episode_len']} steps for training, "
        f"{cfg['test_episodes']} held out; latent_dim {cfg['latent_dim']}, "
        f"{cfg['num_members']} members, {cfg['steps']} gradient steps, seed {cfg['seed']}, "
        f"open loop after {cfg['context']} filtered frames; {cfg['machine']}.",
        "",
        "| encoder | ELBO/step (median episode) | one-step lppd/step | MSE h=1 | MSE h=10 "
        "| epist. var h=10 | R² cos θ | R² sin θ | R² θ̇ | R² θ̇ (quadratic) | fit s | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for enc, r in result["encoders"].items():
        p = r["probe_r2"]
        lines.append(
            f"| {enc} | {_fmt(r['elbo_per_step'], 6)} "
            f"({_fmt(r.get('elbo_per_step_median', math.nan), 6)}) "
            f"| {_fmt(r['lppd_per_step'], 6)} "
            f"| {_fmt(r['mse_h1'])} | {_fmt(r['mse_h10'])} | {_fmt(r['epistemic_var_h10'])} "
            f"| {_fmt(p['cos_theta'], 3)} | {_fmt(p['sin_theta'], 3)} "
            f"| {_fmt(p['theta_dot'], 3)} "
            f"| {_fmt(r.get('probe_r2_quadratic', {}).get('theta_dot', math.nan), 3)} "
            f"| {r['fit_seconds']:.0f} "
            f"| {r['seconds_per_step']:.2f} |"
        )
    lines += [
        "",
        "ELBO and lppd in nats per frame (1024 pixels), held-out episodes. The filtering "
        "encoder's ELBO is its filtering bound (a sum of one-step bounds), the others' the "
        "sequence ELBO; the one-step lppd (log of the members' average filter-predictive "
        f"density, {cfg['lppd_particles']} particles per member) is the same quantity for all. "
        "MSE per pixel (intensities in [0, 1]); predicting the training mean frame scores "
        f"{_fmt(result.get('baseline_mse_mean_frame', math.nan))}. R²: linear probe fitted on "
        "the training episodes' posterior means, scored on the held-out ones (quadratic: on "
        "the means and their pairwise products).",
        "",
    ]
    return "\n".join(lines)


def quadratic_features(z: Tensor) -> Tensor:
    """``(n, d) -> (n, d + d (d + 1) / 2)``: ``z`` and its products ``z_i z_j``, ``i <= j``."""
    i, j = torch.triu_indices(z.shape[-1], z.shape[-1])
    return torch.cat([z, z[:, i] * z[:, j]], dim=-1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=20, help="training episodes")
    parser.add_argument("--test-episodes", type=int, default=5, help="held-out episodes")
    parser.add_argument("--episode-len", type=int, default=200, help="steps per episode")
    parser.add_argument("--steps", type=int, default=1500, help="gradient steps per fit")
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=20, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=24, help="steps per training sequence")
    parser.add_argument("--encoders", default=",".join(ENCODERS))
    parser.add_argument("--context", type=int, default=10, help="frames filtered before open loop")
    parser.add_argument("--elbo-samples", type=int, default=4)
    parser.add_argument("--lppd-windows", type=int, default=10)
    parser.add_argument("--lppd-particles", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=Path("experiments/latent_pixels.json"))
    parser.add_argument("--figures", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = args.figures or args.out.with_name(args.out.stem + "_figures")
    task = get_task(PENDULUM_PIXELS_ID)
    if task.frame_shape is None:
        raise RuntimeError(f"{PENDULUM_PIXELS_ID} has no frame_shape")

    start = time.perf_counter()
    train = collect(args.episodes, args.episode_len, args.seed)
    test = collect(args.test_episodes, args.episode_len, args.seed + 100_000)
    collect_seconds = time.perf_counter() - start
    print(f"collected {args.episodes} + {args.test_episodes} episodes in {collect_seconds:.1f} s")
    buffer = train.buffer()

    result: dict[str, Any] = {
        "config": {
            "env": PENDULUM_PIXELS_ID,
            "episodes": args.episodes,
            "test_episodes": args.test_episodes,
            "episode_len": args.episode_len,
            "steps": args.steps,
            "latent_dim": args.latent_dim,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "num_members": 5,
            "context": args.context,
            "elbo_samples": args.elbo_samples,
            "lppd_windows": args.lppd_windows,
            "lppd_particles": args.lppd_particles,
            "seed": args.seed,
            "torch_threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        },
        "collect_seconds": collect_seconds,
        # what predicting the training episodes' mean frame scores (the MSE to beat)
        "baseline_mse_mean_frame": float((test.obs - train.obs.mean((0, 1))).pow(2).mean()),
        "encoders": {},
    }
    for enc in args.encoders.split(","):
        model = LatentStateSpaceModel(
            task.obs_dim,
            task.action_dim,
            frame_shape=task.frame_shape,
            encoder=enc,
            latent_dim=args.latent_dim,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            first_fit_steps=args.steps,
            seed=args.seed,
        )
        fit_start = time.perf_counter()

        def progress(
            epoch: int, loss: float, _val: float, enc: str = enc, t0: float = fit_start
        ) -> None:
            elapsed = time.perf_counter() - t0
            print(f"  {enc} epoch {epoch}: loss {loss:.4f} ({elapsed:.0f} s)", flush=True)

        gen = torch.Generator().manual_seed(args.seed)
        report = model.fit(buffer, generator=gen, progress=progress)
        fit_seconds = time.perf_counter() - fit_start
        row: dict[str, Any] = {
            "fit_seconds": fit_seconds,
            "seconds_per_step": fit_seconds / args.steps,
            "final_train_loss": report.final_train_loss,
        }
        row.update(
            evaluate(
                model,
                train,
                test,
                args.context,
                args.elbo_samples,
                args.lppd_windows,
                args.lppd_particles,
                figures / enc,
            )
        )
        result["encoders"][enc] = row
        skip = ("figures", "elbo_per_step_by_episode")
        shown = {k: v for k, v in row.items() if not k.endswith("seconds") and k not in skip}
        print(enc, json.dumps(shown, default=float), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))  # after each encoder
        args.out.with_suffix(".md").write_text(markdown_table(result))
    result["total_seconds"] = time.perf_counter() - start
    args.out.write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown_table(result))
    print(markdown_table(result))
    return result


if __name__ == "__main__":
    main()
