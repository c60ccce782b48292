"""DistributedDataParallel over fused modules (per-layer, and one FusedMLP) + FusedSGD: two
processes on localhost (gloo), each on half of every batch, end with the same parameters as one
process training on whole batches."""
import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import fused_linreg

WORLD_SIZE = 2
STEPS = 6
BATCH = 32
SGD = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)


def make_model(kind="layers"):
    torch.manual_seed(0)
    if kind == "mlp":
        return fused_linreg.FusedMLP([10, 24, 24, 2]).double()
    return nn.Sequential(
        fused_linreg.FusedLinearReLU(10, 24),
        fused_linreg.FusedLinearReLU(24, 24),
        fused_linreg.FusedLinear(24, 2),
    ).double()


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, BATCH, 10, generator=g, dtype=torch.float64)
    y = torch.randn(STEPS, BATCH, 2, generator=g, dtype=torch.float64)
    return x, y


def train(model, batches):
    opt = fused_linreg.FusedSGD(model.parameters(), **SGD)
    for x, y in batches:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return opt


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, out_dir, kind):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model = DDP(make_model(kind))
        x, y = data()
        shard = BATCH // WORLD_SIZE  # this rank's half of every batch
        batches = [(x[i, rank * shard:(rank + 1) * shard], y[i, rank * shard:(rank + 1) * shard])
                   for i in range(STEPS)]
        opt = train(model, batches)
        buffers = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
        torch.save({"params": list(model.module.state_dict().values()), "buffers": buffers},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["layers", "mlp"])
def test_ddp_two_processes_match_one_process_on_the_whole_batch(tmp_path, kind):
    mp.spawn(_worker, args=(free_port(), str(tmp_path), kind), nprocs=WORLD_SIZE, join=True)

    model = make_model(kind)
    x, y = data()
    opt = train(model, list(zip(x, y)))
    expected = list(model.state_dict().values())
    expected_buffers = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    assert not torch.equal(expected[0], make_model(kind).state_dict()["0.weight"])  # it trained

    for rank in range(WORLD_SIZE):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for i, (a, e) in enumerate(zip(got["params"], expected)):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-13,
                                       msg=lambda m: f"rank {rank} param {i}: {m}")
        for i, (a, e) in enumerate(zip(got["buffers"], expected_buffers)):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-13,
                                       msg=lambda m: f"rank {rank} buffer {i}: {m}")


def _in_backward_worker(rank, port, out_dir):
    """FusedSGD(in_backward=True) in a process group of two: refused when built, and refused at
    the first forward when built before the process group, with no parameter changed."""
    torch.set_num_threads(1)
    model = make_model()
    early_opt = fused_linreg.FusedSGD(model.parameters(), in_backward=True, **SGD)  # noqa: F841
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))
    errors = []
    try:
        ddp = DDP(model)
        before = [p.detach().clone() for p in model.parameters()]
        x, y = data()
        try:
            nn.functional.mse_loss(ddp(x[0]), y[0]).backward()
        except RuntimeError as e:
            errors.append(str(e))
        try:
            fused_linreg.FusedSGD(model.parameters(), in_backward=True, **SGD)
        except RuntimeError as e:
            errors.append(str(e))
        unchanged = all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
        torch.save({"errors": errors, "unchanged": unchanged}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_in_backward_sgd_is_refused_across_processes(tmp_path):
    mp.spawn(_in_backward_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    for rank in range(WORLD_SIZE):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["unchanged"]
        assert len(got["errors"]) == 2
        assert all("world size 2" in e and "in_backward=False" in e for e in got["errors"])
