"""One process of the DDP test (tests/test_torch.py): train derive.torch.LSTM a few steps.

    python torch_ddp_worker.py RANK WORLD PORT OUT

WORLD 2: DistributedDataParallel over gloo on 127.0.0.1:PORT, this rank on its half of the
batch; WORLD 1: one process on the whole batch. Saves the parameters before and after.

A rank ends with a barrier, drops its DDP wrapper and optimizer (the reducer holds gloo
work) before destroying the process group, and leaves with os._exit once its result is
on disk: gloo's worker threads can abort the interpreter's teardown ("terminate called
without an active exception", SIGABRT; seen once in CI, see pytorch/pytorch#179291),
which says nothing about the gradients this test compares.
"""

import gc
import os
import sys

import torch
import torch.distributed as dist

import derive.torch as dt


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = dt.LSTM(5, 8, num_layers=2, dropout=0.0)
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[-1]).squeeze(-1)


def main(rank: int, world: int, port: int, out: str) -> None:
    torch.manual_seed(0)
    model = Net().double()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 8, 5, dtype=torch.float64, generator=g)
    y = torch.randn(8, dtype=torch.float64, generator=g)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
        model = torch.nn.parallel.DistributedDataParallel(model)
        rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
        x, y = x[:, rows], y[rows]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(4):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    net = model.module if world > 1 else model
    torch.save({"start": start, "end": {k: v.detach().clone() for k, v in
                                        net.state_dict().items()}}, out)
    if world > 1:
        dist.barrier()
        del model, opt, net
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
