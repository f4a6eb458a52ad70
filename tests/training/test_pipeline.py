"""train(cfg) end to end on a small synthetic benchmark: periodic evaluation leaves the run untouched, resume
reads tensors only and refuses a checkpoint of another model, one live run per output folder."""
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

import pscfast.train as run_cli
from pscfast.models import PSCNet, save_checkpoint
from pscfast.training import TrainConfig, train
from pscfast.training.outdir import FolderInUseError, OutputLock
from pscfast.training.pipeline import load_resume

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def paper_config(bench_root, out, **kw):
    """train/configs/paper_r18.json's stage 2 scaled down to seconds on a CPU: its periodic evaluation
    (eval_every), augmentation, channels-last and schedule shape, at 32x32 with 2 steps per epoch."""
    small = dict(stage="estimator", data_root=bench_root, out=str(out), image_size=32, batch_size=2,
                 epochs_estimator=3, max_steps_per_epoch=2, warmup_epochs=0.5, eval_every=1, save_every=1,
                 eval_limit=2, eval_batch_size=2, workers=0, progress=False, tensorboard=False, device="cpu")
    return TrainConfig.from_json(os.path.join(ROOT, "train", "configs", "paper_r18.json"), **{**small, **kw})


def _model(path):
    return torch.load(path, weights_only=True)["model"]


def test_periodic_evaluation_leaves_the_frozen_encoder_alone_and_resume_exact(bench_root, tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "init.pt", PSCNet("resnet18"))  # the encoder stage 2 starts from
    cfg = paper_config(bench_root, tmp_path / "a", init=str(tmp_path / "init.pt"))
    assert cfg.eval_every == 1 and cfg.augment and cfg.channels_last
    full = train(cfg)
    init, final = _model(tmp_path / "init.pt"), _model(tmp_path / "a" / "final.pt")
    encoder = [k for k in final if k.startswith("encoder.")]
    changed = [k for k in encoder if not torch.equal(init[k], final[k])]
    assert len(encoder) > 100 and changed == [], f"{len(changed)} frozen encoder tensors changed: {changed[:3]}"
    assert any(not torch.equal(init[k], final[k]) for k in final if k.startswith("stn."))
    # stage 2 resumed after its first epoch (evaluated there) ends bitwise where the uninterrupted run did
    resumed = train(paper_config(bench_root, tmp_path / "b", resume=str(tmp_path / "a" / "stage2_epoch0001.pt")))
    assert [h["loss"] for h in resumed["history"][2]] == [h["loss"] for h in full["history"][2][2:]]
    again = _model(tmp_path / "b" / "final.pt")
    assert [k for k in final if not torch.equal(final[k], again[k])] == []


class _Payload:
    """Unpickling this calls os.mkdir(path): a stand-in for any code a crafted checkpoint could run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_resume_runs_no_code_from_the_file(bench_root, tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"format": "pscfast", "training": {"stage": 2}, "x": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"resume: .*evil\.pt cannot be read as a checkpoint of tensors .*GLOBAL"):
        train(paper_config(bench_root, tmp_path / "out", resume=str(tmp_path / "evil.pt")))
    assert not marker.exists()


def test_resume_refuses_a_checkpoint_the_run_cannot_continue(bench_root, tmp_path):
    model = PSCNet("resnet18")
    save_checkpoint(tmp_path / "final.pt", model)
    save_checkpoint(tmp_path / "stage2_last.pt", model, training={"stage": 2, "epoch": 1})
    stage2 = str(tmp_path / "stage2_last.pt")
    for kw, words in ((dict(resume=str(tmp_path / "final.pt")), r"final\.pt holds no training state.*--init"),
                      (dict(resume=stage2, arch="resnet50"), r"holds a resnet18 model but the run is configured for "
                                                             r"resnet50: pass --arch resnet18"),
                      (dict(resume=stage2, shared_bn=True), r"trained with shared_bn=False but the run has "
                                                            r"shared_bn=True: drop --shared-bn"),
                      (dict(resume=stage2, stage="encoder"),
                       r"written in stage 2, which stage='encoder' does not run")):
        with pytest.raises(ValueError, match=words):
            load_resume(paper_config(bench_root, tmp_path / "out", **kw))
    assert load_resume(paper_config(bench_root, tmp_path / "out", resume=stage2))["training"]["stage"] == 2


def test_a_second_live_run_in_the_same_folder_is_refused(bench_root, tmp_path):
    out = tmp_path / "shared"
    code = """
import sys
from pscfast.training.outdir import OutputLock
with OutputLock(sys.argv[1], "holder"):
    print("locked", flush=True)
    sys.stdin.read()
"""
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUseError, match=rf"output folder {out} is in use by another run \(pid "
                                                   rf"{holder.pid}\); choose another --out"):
            train(paper_config(bench_root, out))
        assert sorted(os.listdir(out)) == ["train.lock"]  # refused before writing anything
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed run leaves the lock file, not the lock
        holder.wait()
    with OutputLock(str(out), "next"):
        assert (out / "train.lock").read_text().strip() == str(os.getpid())


def test_a_diverging_run_stops_naming_the_step_and_keeps_finite_checkpoints(bench_root, tmp_path, capsys):
    """train/run.py at lr 1e8: one line naming the stage and step (exit 1), and every checkpoint left in the
    output folder is finite (the epoch in which the STN's BN buffers overflowed is never saved)."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        run_cli.main(["--data-root", bench_root, "--out", str(out), "--stage", "estimator", "--lr", "1e8",
                      "--epochs", "3", "--batch-size", "2", "--image-size", "32", "--max-steps-per-epoch", "2",
                      "--eval-limit", "2"])
    err = capsys.readouterr().err.split("\n")[-2]  # the progress bar ends its line before the message
    assert info.value.code == 1 and re.match(r"train/run\.py: stage 2, step \d+: .*non-finite", err), err
    saved = [f for f in os.listdir(out) if f.endswith(".pt")]
    assert saved == ["stage2_last.pt"]
    state = torch.load(out / "stage2_last.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_run_killed_while_saving_keeps_its_previous_checkpoint_and_the_next_removes_the_partial_one(tmp_path):
    out = tmp_path / "out"
    code = """
import sys, time, torch
from pscfast.models import save_checkpoint
from tests.models.tiny_model import Tiny

save_checkpoint(sys.argv[1], Tiny(1))
def stalled(obj, f):  # part of the file written, then the process is killed
    f.write(b"PK partial")
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
torch.save = stalled
save_checkpoint(sys.argv[1], Tiny(2))
"""
    writer = subprocess.Popen([sys.executable, "-c", code, str(out / "m.pt")], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert writer.stdout.readline() == "writing\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    partial = [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert len(partial) == 1 and partial[0].startswith(f".m.pt.{writer.pid}.")
    assert torch.load(out / "m.pt", weights_only=True)["model"]["w"].eq(1).all()
    live = out / f".x.pt.{os.getpid()}.0123abcd.tmp"  # a write of a live process stays
    live.write_bytes(b"")
    with OutputLock(str(out), "next"):
        assert sorted(os.listdir(out)) == [live.name, "m.pt", "train.lock"]
