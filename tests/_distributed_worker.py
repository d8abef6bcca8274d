"""One rank of the 2-process gloo test in test_losses_distributed_on_cpu.py (run as a script)."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from entrolab.control import AdaptiveEntropyCoefficient
from entrolab.dynamics import entropy_dynamics
from entrolab.losses import Aggregation, get_policy_loss

CUT = 3  # rank 0 holds rows [0, 3), rank 1 rows [3, 8): unequal halves on purpose


def make_batch():
    g = torch.Generator().manual_seed(11)
    b, t = 8, 13
    logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 4
    old = logp + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.2
    adv = torch.randn(b, generator=g, dtype=torch.float64) * 2
    mask = torch.rand(b, t, generator=g) < 0.85
    mask[:, 0] = True
    entropy = torch.rand(b, t, generator=g, dtype=torch.float64) * 2 + 0.01
    return logp, old, adv, mask, entropy


CASES = {
    "clip_cov": {"ratio": 0.05, "cov_lb": 0.1, "cov_ub": 20.0},
    "kl_cov": {"ratio": 0.07},
    "steer": {},
    "hapo": {},
    "entropy_balanced": {},
    "high_entropy_tokens": {"eps_high": 0.28},
}


def run(rows: slice | None, *, distributed: bool) -> dict:
    logp, old, adv, mask, ent = make_batch()
    n_total = float(mask.sum())
    if rows is not None:
        logp, old, adv, mask, ent = logp[rows], old[rows], adv[rows], mask[rows], ent[rows]
    out = {}
    for name, kw in CASES.items():
        lp = logp.clone().requires_grad_(True)
        res = get_policy_loss(name)(
            lp,
            old,
            adv,
            mask,
            entropy=ent,
            agg=Aggregation("token-mean", num_tokens=n_total),
            generator=torch.Generator().manual_seed(5),
            global_stats=distributed,
            **kw,
        )
        (grad,) = torch.autograd.grad(res.loss, lp)
        out[name] = (res.loss.detach(), grad)
    dyn = entropy_dynamics(logp, adv, mask, global_stats=distributed)
    out["dynamics"] = (dyn.cov_mean, dyn.cov_max, dyn.cov_min, dyn.cov_std, dyn.covariance)
    ctl = AdaptiveEntropyCoefficient(target=1.0, process_group=dist.group.WORLD if distributed else None)
    ctl.accumulate(ent, mask)
    ctl.observe()
    out["controller"] = ctl.last_window_entropy
    return out


def main() -> None:
    rank, init_file, out_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        rows = slice(0, CUT) if rank == 0 else slice(CUT, None)
        torch.save(run(rows, distributed=True), out_file)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
