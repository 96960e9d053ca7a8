"""Why the convolutional decoder's output is linear: a plain autoencoder of pendulum
frames with a sigmoid output against the same with a linear one.

Collects ``--episodes`` random-policy episodes of ``bayes_mbrl/PendulumPixels-v0``
(32 x 32 frames, about 1% bright pixels), then trains the toolkit's
``ConvEmbedding -> Linear -> (latent) -> ConvDecoder`` on the squared error for
``--steps`` Adam steps of 128 frames, once with the decoder's output passed through
a sigmoid (what the decoder had before 2026-12-04) and once as it is (linear), and
prints the MSE every 100 steps, the final MSE on 500 frames, and the MSE of the
mean frame.

    python experiments/conv_decoder_output.py --steps 600
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium
import numpy as np
import torch

import bayes_mbrl.envs  # noqa: F401  (registers the pixel task)
from bayes_mbrl.envs import PENDULUM_PIXELS_ID
from bayes_mbrl.models.latent.networks import ConvDecoder, ConvEmbedding

__all__ = ["main"]


def frames(episodes: int) -> torch.Tensor:
    env = gymnasium.make(PENDULUM_PIXELS_ID)
    env.action_space.seed(0)
    out = []
    for ep in range(episodes):
        env.reset(seed=ep)
        for _ in range(200):
            obs, *_ = env.step(env.action_space.sample())
            out.append(obs)
    env.close()
    return torch.tensor(np.array(out))


def train(x: torch.Tensor, output: str, steps: int, latent: int) -> float:
    torch.manual_seed(0)
    shape = (1, 32, 32)
    enc, dec = ConvEmbedding(shape, 64, 16), ConvDecoder(latent, shape, 128, 16)
    head = torch.nn.Linear(64, latent)
    squash = torch.sigmoid if output == "sigmoid" else (lambda t: t)

    def recon(batch: torch.Tensor) -> torch.Tensor:
        return squash(dec(head(enc(batch))))

    params = [*enc.parameters(), *dec.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(steps):
        batch = x[torch.randint(len(x), (128,), generator=gen)]
        loss = (recon(batch) - batch).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(
                f"  {output} step {step}: {loss.item():.5f} ({time.perf_counter() - start:.0f} s)"
            )
    with torch.no_grad():
        return float((recon(x[:500]) - x[:500]).pow(2).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--latent", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = frames(args.episodes)
    print(f"{len(x)} frames; mean-frame MSE {float((x - x.mean(0)).pow(2).mean()):.5f}")
    for output in ("sigmoid", "linear"):
        print(f"{output} output: final MSE {train(x, output, args.steps, args.latent):.5f}")


if __name__ == "__main__":
    main()
