"""A stand-in for PSCNet with what save_checkpoint reads (arch, shared_bn, state_dict) and one tensor, for
tests (and their subprocesses) that write many checkpoints."""
import torch


class Tiny(torch.nn.Module):
    arch, shared_bn = "tiny", False

    def __init__(self, value, n=50_000):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((n,), float(value)))
