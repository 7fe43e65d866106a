#!/usr/bin/python3
"""Golden optimizer trajectories from PyTorch (Debian python3-torch 1.13), for packages/paged-optim tests.

Writes test/fixtures/trajectories.safetensors: initial parameters, the gradient of every step, and the
parameters after every step of
  - torch.optim.AdamW (foreach=False and foreach=True) with two parameter groups,
  - Lion as lion-pytorch implements it (written out below; decoupled decay first),
  - torch.optim.SGD with momentum (group 0: dampening, group 1: Nesterov, both with weight decay),
over 50 steps on four tensors. Parameter "d" has no gradient at steps 10..14 (torch skips it, so its
own step count lags). Run: /usr/bin/python3 packages/paged-optim/scripts/make_fixtures.py
"""
import json
import os
import struct

import torch

STEPS = 50
SHAPES = {"a": (7, 5), "b": (33,), "c": (4, 3, 2), "d": (130,)}
GROUPS = [["a", "b"], ["c", "d"]]
NO_GRAD_STEPS = {"d": range(10, 15)}

torch.manual_seed(1234)
init = {k: torch.randn(s, dtype=torch.float32) for k, s in SHAPES.items()}
scales = {"a": 1.0, "b": 0.01, "c": 3.0, "d": 0.1}
grads = {k: torch.randn((STEPS,) + s, dtype=torch.float32) * scales[k] for k, s in SHAPES.items()}

HYPER = {
    "adamw": [dict(lr=1e-3, weight_decay=0.01), dict(lr=5e-3, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6)],
    "lion": [dict(lr=1e-4, weight_decay=0.0), dict(lr=3e-4, weight_decay=0.1, betas=(0.95, 0.98))],
    "sgd": [
        dict(lr=0.01, momentum=0.9, dampening=0.1, weight_decay=0.01),
        dict(lr=0.02, momentum=0.8, nesterov=True, weight_decay=0.001),
    ],
}


class Lion(torch.optim.Optimizer):
    """lion-pytorch (lucidrains) update_fn, the reference bitsandbytes >= 0.50 also follows."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg, grad = state["exp_avg"], p.grad
                p.data.mul_(1 - lr * wd)
                update = exp_avg.clone().mul_(beta1).add(grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-lr)
                exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


def run(make):
    params = {k: init[k].clone().requires_grad_(True) for k in SHAPES}
    groups = [dict(params=[params[n] for n in names], **h) for names, h in zip(GROUPS, make[1])]
    opt = make[0](groups)
    traj = {k: [] for k in SHAPES}
    for t in range(STEPS):
        for k, p in params.items():
            p.grad = None if t in NO_GRAD_STEPS.get(k, ()) else grads[k][t].clone()
        opt.step()
        for k, p in params.items():
            traj[k].append(p.detach().clone())
    return {k: torch.stack(v) for k, v in traj.items()}


runs = {
    "adamw": run((lambda g: torch.optim.AdamW(g, foreach=False), HYPER["adamw"])),
    "adamw_foreach": run((lambda g: torch.optim.AdamW(g, foreach=True), HYPER["adamw"])),
    "lion": run((Lion, HYPER["lion"])),
    "sgd": run((lambda g: torch.optim.SGD(g, foreach=False), HYPER["sgd"])),
}

tensors = {}
for k in SHAPES:
    tensors[f"init.{k}"] = init[k]
    tensors[f"grad.{k}"] = grads[k]
    for r, traj in runs.items():
        tensors[f"{r}.{k}"] = traj[k]

meta = {
    "generator": "packages/paged-optim/scripts/make_fixtures.py",
    "torch": torch.__version__,
    "steps": str(STEPS),
    "groups": json.dumps(GROUPS),
    "hyper": json.dumps(HYPER),
    "no_grad_steps": json.dumps({k: list(v) for k, v in NO_GRAD_STEPS.items()}),
}
header, blobs, offset = {"__metadata__": meta}, [], 0
for name, t in tensors.items():
    b = t.contiguous().numpy().astype("<f4").tobytes()
    header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
    blobs.append(b)
    offset += len(b)
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "trajectories.safetensors")
tmp = out + ".tmp"
with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
os.replace(tmp, out)
print(f"wrote {out}: {len(tensors)} tensors, {offset} data bytes")
