"""Run by test_ddp.py under torchrun (gloo, CPU): a tiny stage-2 run, parameters saved per rank."""
import os
import sys

import torch

from pscfast.training import distributed as dist_utils
from pscfast.training.estimator_stage import EstimatorStage
from pscfast.training.pipeline import build_model
from tests.training.fake_pairs import FakePairs, tiny_config

if __name__ == "__main__":
    out, batch = sys.argv[1], int(sys.argv[2])
    cfg = tiny_config(batch_size=batch, augment=False, sim_weight=0.0, epochs_estimator=1, lr_estimator=0.01)
    rank, world, device = dist_utils.init("cpu")
    torch.manual_seed(0)
    model = build_model(cfg, device)
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.stn.state_dict().items()}, os.path.join(out, "init.pt"))
    EstimatorStage(cfg, model, FakePairs(4), device, rank, world).run()
    # the global batch norms are the stage's own: the model keeps its BatchNorm2d, holding the trained values
    assert all(type(m) is not dist_utils.GlobalBatchNorm2d for m in model.modules())
    torch.save({k: v.detach().clone() for k, v in model.stn.state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))
