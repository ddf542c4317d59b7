"""Short end-to-end training with the paper's model shapes on scikit-learn digits (8x8)."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from proxprop import ProxPropConv2d, ProxPropLinear

MODES = ["gradient", "prox_exact", "prox_cg1", "prox_cg3", "prox_cg3_ref"]


@pytest.fixture
def one_thread():
    """Tiny models: avoid OpenMP oversubscription on the shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = torch.tensor(data.data[:400] / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target[:400], dtype=torch.long)
    return x, y


def mlp(mode: str) -> nn.Module:
    kw = {"tau_prox": 0.05, "optimization_mode": mode}
    return nn.Sequential(
        ProxPropLinear(64, 100, **kw), nn.ReLU(), ProxPropLinear(100, 50, **kw), nn.ReLU(),
        ProxPropLinear(50, 100, **kw), nn.ReLU(), nn.Linear(100, 10),
    )


def convnet(mode: str) -> nn.Module:
    kw = {"tau_prox": 1.0, "optimization_mode": mode, "padding": 2}
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        ProxPropConv2d(1, 16, 5, **kw), nn.ReLU(), nn.MaxPool2d(2),
        ProxPropConv2d(16, 20, 5, **kw), nn.ReLU(), nn.MaxPool2d(2),
        ProxPropConv2d(20, 20, 5, **kw), nn.ReLU(), nn.Flatten(), nn.Linear(20 * 2 * 2, 10),
    )


def full_batch_loss(model, x, y) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ["mlp", "convnet"])
def test_training_decreases_full_batch_loss(digits, one_thread, arch, mode):
    x, y = digits
    torch.manual_seed(0)
    model = mlp(mode) if arch == "mlp" else convnet(mode)
    if arch == "mlp":
        lr = 0.2 if mode == "gradient" else 1.0
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.95, nesterov=True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    start = full_batch_loss(model, x, y)
    for _ in range(4):
        for idx in torch.randperm(len(x)).split(50):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    end = full_batch_loss(model, x, y)
    assert end < 0.8 * start, (start, end)
