"""One rank of the 2-process TRL test in test_integration_trl_ddp_on_cpu.py (``torchrun --nproc_per_node 2``).

``train OUT``: for every registered policy loss, with and without gradient checkpointing (and with ``global_stats``
where the loss has it), two real ``EntropyGRPOTrainer`` steps under DDP; records the world size, the backend, the
logged losses and, per rank, a hash of the parameters after training.
``grad OUT``: one fixed batch split over the ranks (unequal halves), loss and DDP-averaged gradient through the
trainer's public ``compute_loss``; rank 0 saves the gradient for the test to compare with one process on the whole
batch.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tests._trl_fixtures import CUT, GRAD_CASES, config, data, fixed_batch, grads, model, reward, tokenizer

LOSSES = {
    "ppo": {}, "cispo": {}, "gspo": {}, "clip_cov": {"ratio": 0.2, "cov_lb": 0.0}, "kl_cov": {"ratio": 0.2},
    "steer": {}, "hapo": {}, "entropy_balanced": {}, "high_entropy_tokens": {},
}  # fmt: skip
GLOBAL = ("clip_cov", "kl_cov", "steer", "hapo", "entropy_balanced", "high_entropy_tokens")


def _param_hash(m: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(m.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to(torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


def train(out: Path) -> None:
    from entrolab.integrations.trl import EntropyGRPOTrainer

    tok = tokenizer()
    cases = [(name, kw, gc, 0.0) for name, kw in LOSSES.items() for gc in (False, True)]
    cases += [(name, {**LOSSES[name], "global_stats": True}, False, 0.0) for name in GLOBAL]
    cases += [("ppo", {}, False, 0.01)]  # an entropy bonus: TRL then also logs policy_loss and entropy_coef
    results = []
    for i, (name, kw, gc, coef) in enumerate(cases):
        cfg = config(out / f"run{i}", max_steps=2, gradient_checkpointing=gc, num_iterations=2, entropy_coef=coef)
        trainer = EntropyGRPOTrainer(
            model(tok, seed=1), reward_funcs=reward, args=cfg, train_dataset=data(), processing_class=tok,
            policy_loss=name, loss_kwargs=kw,
        )  # fmt: skip
        trainer.train()
        losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
        keys = sorted(set().union(*(row for row in trainer.state.log_history if "loss" in row)))
        hashes: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(hashes, _param_hash(trainer.model))
        results.append({"loss": name, "kwargs": kw, "gc": gc, "coef": coef, "losses": losses, "hashes": hashes,
                        "keys": keys, "steps": trainer.state.global_step,
                        "ddp": type(trainer.model_wrapped).__name__})  # fmt: skip
    if dist.get_rank() == 0:
        info = {"world": dist.get_world_size(), "backend": dist.get_backend(), "results": results}
        (out / "train.json").write_text(json.dumps(info))


def grad(out: Path) -> None:
    from entrolab.integrations.trl import EntropyGRPOTrainer

    tok = tokenizer()
    saved = {}
    for name, kw in GRAD_CASES:
        trainer = EntropyGRPOTrainer(
            model(tok, seed=2), reward_funcs=reward, args=config(out / name), train_dataset=data(),
            processing_class=tok, policy_loss=name, loss_kwargs=kw,
        )  # fmt: skip
        rank = dist.get_rank()  # the process group exists once accelerate's state does
        rows = slice(0, CUT) if rank == 0 else slice(CUT, None)
        ddp = trainer.accelerator.prepare_model(trainer.model)
        ddp.train()
        trainer.current_gradient_accumulation_steps = 1
        batch = fixed_batch(tok, rows)
        loss = trainer.compute_loss(ddp, batch)
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        saved[name] = {"loss_sum": total, "grads": grads(trainer.model), "ddp": type(ddp).__name__}
    if dist.get_rank() == 0:
        torch.save(saved, out / "grad.pt")


if __name__ == "__main__":
    {"train": train, "grad": grad}[sys.argv[1]](Path(sys.argv[2]))
    # Accelerate created the process group and never destroys it; left to interpreter shutdown, gloo's threads can
    # outlive their owner and abort the process ("terminate called without an active exception", seen once in a
    # clean-clone run after every case had trained; pytorch/pytorch#190489): both ranks get here, then the group goes.
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
