"""The common workload of the peer comparison: pure PyTorch, no FL framework.

Every system measured uses this file unchanged, so the model, the data and the
local step are the same byte for byte: NVIDIA FLARE ships it in the job's
``custom/`` folder, Flower in the app bundle, flstack's app reproduces it with
its built-in components (``ours/run.py`` says how). It must stay importable as a
top-level module ``workload`` (the peers' runtimes load it that way), so it
imports nothing but torch and the standard library.

One round: the server sends the full global model to all N clients; each does
exactly one SGD step (lr 0.01, no momentum, cross-entropy) on its batch of 32
synthetic samples and sends the full model back with ``num_examples = 32``; the
server's sample-weighted FedAvg is the next global model. No evaluation. Five
rounds. Client k (1-based) draws its data from seed 1000 + k; round r uses
batch (r - 1) mod 10.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

IN_DIM = 1024
OUT_DIM = 10
BATCH = 32
LR = 0.01
SAMPLES_PER_CLIENT = 320
"""Ten batches; round r uses batch (r - 1) % 10."""

SIZES = {"S": 608, "L": 4509}
"""Hidden width per size (2 hidden layers: W^2 + 1036 W + 10 parameters): S has 999,562
parameters (4.0 MB), L 25,002,415 (100.0 MB)."""


def width_for_params(n_params: float) -> int:
    """Hidden width W such that W^2 + (IN_DIM + 2 + OUT_DIM) W + OUT_DIM ~= n_params."""
    b = IN_DIM + 2 + OUT_DIM
    return round((-b + math.sqrt(b * b + 4 * (n_params - OUT_DIM))) / 2)


def width_for(size: str) -> int:
    """The width of a named size, or of about that many parameters (e.g. "5e6")."""
    if size in SIZES:
        return SIZES[size]
    return width_for_params(float(size))


def parameters(width: int) -> int:
    """Exact parameter count of ``BenchMLP(width)``."""
    return width**2 + (IN_DIM + 2 + OUT_DIM) * width + OUT_DIM


def model_of(size: str) -> tuple[int, int]:
    """(width, parameters) of a size, as result.json records them."""
    width = width_for(size)
    return width, parameters(width)


class BenchMLP(nn.Module):
    """Linear(IN, W) ReLU Linear(W, W) ReLU Linear(W, OUT)."""

    def __init__(self, width: int = 608, in_dim: int = IN_DIM, out_dim: int = OUT_DIM) -> None:
        super().__init__()
        self.width = width
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.fc1 = nn.Linear(in_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out


def make_model(width: int, seed: int = 0) -> BenchMLP:
    """The initial global model (seeded where a framework lets us seed it)."""
    torch.manual_seed(seed)
    return BenchMLP(width)


def client_index(name_or_index: str | int) -> int:
    """'site-3' -> 3, '3' -> 3, 3 -> 3 (the caller decides between 0- and 1-based)."""
    if isinstance(name_or_index, int):
        return name_or_index
    digits = "".join(c for c in name_or_index if c.isdigit())
    return int(digits) if digits else 0


def client_data(idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic synthetic data set of client ``idx``: seed 1000 + idx."""
    g = torch.Generator().manual_seed(1000 + idx)
    x = torch.randn(SAMPLES_PER_CLIENT, IN_DIM, generator=g)
    y = torch.randint(0, OUT_DIM, (SAMPLES_PER_CLIENT,), generator=g)
    return x, y


def local_step(model: nn.Module, idx: int, rnd: int) -> tuple[float, int]:
    """Exactly one SGD step on one batch of BATCH samples: (loss, num_examples)."""
    x, y = client_data(idx)
    b = (rnd - 1) % (SAMPLES_PER_CLIENT // BATCH)
    xb, yb = x[b * BATCH : (b + 1) * BATCH], y[b * BATCH : (b + 1) * BATCH]
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(xb), yb)
    torch.autograd.backward(loss)
    opt.step()
    return float(loss.item()), BATCH


def limit_threads() -> None:
    """One intra-op thread per process: many processes share 2 cores."""
    torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "1")))
