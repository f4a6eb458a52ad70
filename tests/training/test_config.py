"""TrainConfig and train/run.py's flags: the paper's configs, overrides, and bad values refused up front."""
import importlib.util
import json
import os

import pytest

from pscfast.training.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_module():
    spec = importlib.util.spec_from_file_location("train_run", os.path.join(ROOT, "train", "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, arch", [("paper_r18", "resnet18"), ("paper_r101", "resnet101")])
def test_paper_configs_hold_the_papers_settings(name, arch):
    cfg = TrainConfig.from_json(os.path.join(ROOT, "train", "configs", f"{name}.json"))
    assert (cfg.arch, cfg.image_size, cfg.batch_size) == (arch, 256, 256)
    assert (cfg.epochs_encoder, cfg.epochs_estimator, cfg.warmup_epochs) == (1500, 1500, 100)
    assert (cfg.lr_encoder, cfg.lr_estimator, cfg.tau, cfg.sim_weight, cfg.con_weight) == (0.03, 0.003, 0.001, 0.1, 1.0)
    assert (cfg.moco_dim, cfg.moco_k, cfg.moco_m, cfg.moco_t) == (128, 8192, 0.999, 0.07)
    assert cfg.augment and not cfg.augment_loop
    assert cfg.pretrained and cfg.imagenet is None and cfg.warp_weight == 0  # ImageNet weights: --imagenet FILE


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"batch_size": 64, "lr_estimator": 0.01}))
    cfg = _run_module().parse(["--config", str(path), "--batch-size", "16", "--compile", "aot_eager"])
    assert (cfg.batch_size, cfg.lr_estimator, cfg.compile) == (16, 0.01, "aot_eager")
    assert _run_module().parse(["--compile"]).compile is True
    cfg = _run_module().parse(["--moco-k", "32", "--moco-m", "0.99", "--moco-t", "0.1"])
    assert (cfg.moco_k, cfg.moco_m, cfg.moco_t) == (32, 0.99, 0.1)
    assert _run_module().parse(["--augment"]).augment is True and _run_module().parse([]).augment is False
    path.write_text(json.dumps({"augment": True}))  # absent, the flag leaves the config file's value
    assert _run_module().parse(["--config", str(path)]).augment is True
    assert _run_module().parse(["--config", str(path), "--no-augment"]).augment is False


@pytest.mark.parametrize("kw, words", [
    (dict(batch_size=0), "batch_size must be positive"),
    (dict(image_size=16), "image_size must be at least 32"),
    (dict(lr_estimator=-0.1), "lr_estimator must be positive"),
    (dict(moco_m=1.0), "moco_m must be in [0, 1)"),
    (dict(epochs_encoder=-1), "epochs_encoder must be non-negative"),
    (dict(max_steps_per_epoch=0), "max_steps_per_epoch must be at least 1"),
    (dict(stage="decoder"), "stage must be one of"),
    (dict(compile="fast"), "unknown torch.compile backend 'fast'"),
])
def test_bad_values_are_refused(kw, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace(")", r"\)")):
        TrainConfig(**kw)


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps({"batch_sise": 8}))
    for argv, words in ((["--batch-size", "0"], "batch_size must be positive"),
                        (["--config", str(tmp_path / "c.json")], "unknown config keys ['batch_sise']"),
                        (["--config", str(tmp_path / "missing.json")], "No such file")):
        with pytest.raises(SystemExit):
            _run_module().parse(argv)
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
