"""Write the torch.optim.Rprop reference trajectory that tests/test_optim.py checks against.

The problem is built with NumPy alone (so the test rebuilds it without torch): a 3-4-2 tanh MLP
in float64, ``out = tanh(x @ w1.T + b1) @ w2.T + b2`` (torch's ``nn.Linear`` layout), and the
loss ``mean((out - y) ** 2)`` over all samples and outputs (``nn.MSELoss()``). Full-batch
``torch.optim.Rprop`` with lr 0.01 and its default etas and step-size bounds runs N_STEPS steps;
the file holds the data, the parameters before every step and after the last, the loss at each
of those parameters, the settings and the torch version.

Usage (needs ``pip install torch==2.13.0``):
    python scripts/make_rprop_fixture.py [output.npz]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

SEED = 0
N_SAMPLES = 16
SIZES = (3, 4, 2)
LEARNING_RATE = 0.01
N_STEPS = 30
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "tests/fixtures/rprop_torch_trajectory.npz"


def make_problem(seed: int = SEED) -> dict[str, np.ndarray]:
    """The data and the initial float64 weights, from one NumPy generator."""
    rng = np.random.default_rng(seed)
    n_in, n_hidden, n_out = SIZES
    x = rng.normal(size=(N_SAMPLES, n_in))
    y = np.stack([np.sin(x @ [1.0, -0.5, 0.3]), np.cos(x @ [0.2, 0.8, -1.0])], axis=1)
    return {
        "x": x,
        "y": y,
        "w1": rng.normal(size=(n_hidden, n_in)) / np.sqrt(n_in),
        "b1": 0.1 * rng.normal(size=n_hidden),
        "w2": rng.normal(size=(n_out, n_hidden)) / np.sqrt(n_hidden),
        "b2": 0.1 * rng.normal(size=n_out),
    }


def run_torch_rprop(problem: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Full-batch torch Rprop; returns each parameter's trajectory and the losses."""
    names = ("w1", "b1", "w2", "b2")
    params = {k: torch.tensor(problem[k], dtype=torch.float64, requires_grad=True) for k in names}
    x = torch.tensor(problem["x"], dtype=torch.float64)
    y = torch.tensor(problem["y"], dtype=torch.float64)
    optimizer = torch.optim.Rprop(list(params.values()), lr=LEARNING_RATE)

    def loss_fn():
        hidden = torch.tanh(x @ params["w1"].T + params["b1"])
        return torch.nn.functional.mse_loss(hidden @ params["w2"].T + params["b2"], y)

    trajectory = {k: [params[k].detach().numpy().copy()] for k in names}
    losses = []
    for _ in range(N_STEPS):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
        for k in names:
            trajectory[k].append(params[k].detach().numpy().copy())
    with torch.no_grad():
        losses.append(loss_fn().item())
    return {**{k: np.stack(v) for k, v in trajectory.items()}, "loss": np.array(losses)}


def main(output: Path = DEFAULT_OUTPUT) -> None:
    problem = make_problem()
    trajectory = run_torch_rprop(problem)
    settings = {
        "optimizer": "torch.optim.Rprop",
        "lr": LEARNING_RATE,
        "etas": [0.5, 1.2],
        "step_sizes": [1e-6, 50.0],
        "n_steps": N_STEPS,
        "seed": SEED,
        "sizes": list(SIZES),
        "model": "out = tanh(x @ w1.T + b1) @ w2.T + b2",
        "loss": "mean((out - y) ** 2) over samples and outputs",
        "layout": "traj_<name>[t] = parameters before step t (t = n_steps: after the last); "
        "loss[t] = loss at traj_*[t]",
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        output,
        x=problem["x"],
        y=problem["y"],
        **{f"traj_{k}": v for k, v in trajectory.items() if k != "loss"},
        loss=trajectory["loss"],
        torch_version=np.array(torch.__version__),
        settings=np.array(json.dumps(settings)),
    )
    print(f"wrote {output} ({output.stat().st_size} bytes), torch {torch.__version__}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT)
