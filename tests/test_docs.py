"""The documentation: README.md stays short and every command it gives is run by a test or by CI; the benchmark
tables are what bench/report.py renders from the committed results.

A README command is covered when its argument list parses with the program's own parser (checked here, with
placeholders for paths) and a named test runs the program, or when CI runs it (`.ci/run` runs README's test
command, which runs scripts/bootstrap.sh). Commands that are cheap run here.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import report

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELL_BLOCKS = ("", "bash", "sh", "shell")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every ``` block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)


def readme_commands() -> list[str]:
    """Every command of README's shell blocks: one a line, trailing comments dropped, `a && b` split in two."""
    found = []
    for lang, body in fenced_blocks(README.read_text()):
        if lang in SHELL_BLOCKS:
            for line in body.splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                found += [part.strip() for part in line.split("&&") if part.strip()]
    return found


@dataclass(frozen=True)
class RunBy:
    """A test that runs the program: `needle` must appear in the test function's source."""
    path: str
    test: str
    needle: str


CI = "ci"  # .ci/run runs it: README's test command, and scripts/bootstrap.sh which that command starts with
HERE = "here"  # run by test_the_synthetic_benchmark_command_runs below

# A README command (python / pytest without .venv/bin/) -> who runs it; the first matching pattern wins.
COVERS = [
    (r"bash scripts/bootstrap\.sh$", CI),
    (r"python -m pytest$", CI),
    (r"pip install --no-build-isolation -e \.$", CI),
    (r"python -m pscfast\.info$", RunBy("tests/test_build.py", "test_info_cli", '"pscfast.info"')),
    (r"python -m pscfast\.data\.synthetic ", HERE),
    (r"python -m pscfast\.evaluate .*--gt", RunBy("tests/data_pipeline/test_predict_viz.py", "test_evaluate_cli",
                                                  '"--gt"')),
    (r"python -m pscfast\.evaluate ", RunBy("tests/data_pipeline/test_matching.py",
                                            "test_the_clis_score_a_checkpoint_at_its_training_resolution",
                                            '"--checkpoint", str(path)')),
    (r"python -m pscfast\.predict ", RunBy("tests/data_pipeline/test_predict_viz.py",
                                           "test_predict_cli_writes_picture_and_flow", "predict_main(")),
    (r"python -m pscfast\.diagnose .*--probe", RunBy("tests/data_pipeline/test_probe.py", "test_diagnose_cli_probe",
                                                     '"--probe"')),
    (r"python -m pscfast\.diagnose .*--checkpoint pretrained --match",
     RunBy("tests/data_pipeline/test_matching.py", "test_diagnose_matches_the_pretrained_lite0_as_it_installs",
           '"pretrained", "--match"')),
    # two processes under torchrun, through the training stage that train/run.py runs
    (r"torchrun .*train/run\.py ",
     RunBy("tests/training/test_ddp.py", "test_two_process_gloo_ddp_matches_single_process",
           '_run(tmp_path / "ddp", 2')),
    (r"python train/run\.py --model sfnet",
     RunBy("tests/training/test_sfnet_data.py",
           "test_a_run_trains_the_adaptation_layers_and_saves_a_loadable_checkpoint", '"--model", "sfnet"')),
    (r"python train/run\.py (--stage estimator --init|--resume) ",
     RunBy("tests/training/test_pipeline.py",
           "test_periodic_evaluation_leaves_the_frozen_encoder_alone_and_resume_exact", "resume=")),
    (r"python train/run\.py --config ", RunBy("tests/training/test_config.py", "test_flags_override_the_config_file",
                                              '"--config"')),
    (r"python train/run\.py$", RunBy("tests/training/test_known_warps.py",
                                     "test_the_default_run_reports_the_mismatched_photo_baseline", "evaluate_pck(")),
    (r"pytest bench --benchmark$", RunBy("tests/test_bench_harness.py", "test_results_are_saved_per_case_and_resumed",
                                         '"--benchmark"')),
    (r"python bench/report\.py$", RunBy("tests/test_docs.py", "test_the_benchmark_tables_are_what_report_renders",
                                        "report.readme_block(")),
]


def normalise(command: str) -> str:
    return re.sub(r"^\.venv/bin/", "", command)


def cover(command: str):
    return next((how for pattern, how in COVERS if re.match(pattern, normalise(command))), None)


def test_readme_is_at_most_10_kb():
    size = len(README.read_bytes())
    assert size <= 10_000, f"README.md is {size} bytes: move detail to docs/ (at most 10,000)"


def test_readme_keeps_its_two_commands_and_the_bench_block():
    text = README.read_text()
    for marker in ("<!-- main-command -->", "<!-- test-command -->", report.START, report.END):
        assert text.count(marker) == 1, marker


def test_every_readme_command_is_covered():
    commands = readme_commands()
    assert len(commands) >= 10, commands  # the extraction found the README's blocks
    uncovered = [c for c in commands if cover(c) is None]
    assert not uncovered, f"README commands that no test or CI runs (add them to COVERS): {uncovered}"


def _function_source(path: str, name: str) -> str:
    source = (ROOT / path).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(source, node)
    raise AssertionError(f"{path} has no test {name}")


@pytest.mark.parametrize("run_by", sorted({how for _, how in COVERS if isinstance(how, RunBy)}, key=str),
                         ids=lambda r: r.test)
def test_the_named_tests_run_their_programs(run_by):
    assert run_by.needle in _function_source(run_by.path, run_by.test), run_by


def test_ci_runs_the_readme_test_command_and_it_runs_the_bootstrap():
    """The command .ci/run extracts (its own awk line, run here) is README's test command, which runs the
    bootstrap, which runs README's pip install."""
    ci = (ROOT / ".ci" / "run").read_text()
    extract = re.search(r"^cmd=\$\((.*)\)$", ci, flags=re.M).group(1)
    command = subprocess.run(["bash", "-c", extract], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    test_command = next(body for lang, body in fenced_blocks(README.read_text().split("<!-- test-command -->")[1]))
    assert command.strip() == test_command.strip()
    assert command.startswith("bash scripts/bootstrap.sh && ") and command.strip().endswith("python -m pytest")
    assert re.search(r"pip install .*--no-build-isolation -e ", (ROOT / "scripts" / "bootstrap.sh").read_text())


class _Parsed(Exception):
    pass


def _entry(command: str):
    """(the program's main function, its arguments) for a python / torchrun command, else None."""
    try:
        words = shlex.split(normalise(command))
    except ValueError:  # not a command line: test_every_readme_command_is_covered names it
        return None
    if words[0] == "torchrun":
        words = ["python"] + [w for w in words[1:] if not w.startswith("--nproc")]
    if words[0] != "python" or words[1:3] == ["-m", "pytest"]:
        return None
    if words[1] == "-m":
        module, args = importlib.import_module(words[2]), words[3:]
    else:
        spec = importlib.util.spec_from_file_location("readme_script", ROOT / words[1])
        module, args = importlib.util.module_from_spec(spec), words[2:]
        spec.loader.exec_module(module)
    return (module.main, args) if hasattr(module, "main") else None


@pytest.mark.parametrize("command", [c for c in readme_commands() if _entry(c)])
def test_readme_arguments_parse(command, monkeypatch, capsys):
    """Each python command's arguments, exactly as README gives them, pass the program's argument parser (the
    run stops right after parsing)."""
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    main, args = _entry(command)
    try:
        main(args)
    except SystemExit:
        pytest.fail(f"{command}: {capsys.readouterr().err.strip()}")
    except _Parsed:
        return
    pytest.fail(f"{command}: the program never parsed its arguments")


def test_the_synthetic_benchmark_command_runs(tmp_path, capsys):
    """The synthetic benchmark's command, as README gives it, with a tiny set and the output in tmp_path."""
    from pscfast.data import synthetic

    [command] = [c for c in readme_commands() if cover(c) == HERE]
    args = shlex.split(command)[3:]
    args[args.index("--out") + 1] = str(tmp_path / "synthetic")
    synthetic.main(args + ["--classes", "fish", "--photos-per-class", "2", "--sketches-per-photo", "1",
                           "--test-photos-per-class", "1", "--no-masks"])
    assert (tmp_path / "synthetic" / "test_pairs_ps.csv").is_file(), capsys.readouterr()


def test_the_python_snippets_run():
    blocks = [body for lang, body in fenced_blocks(README.read_text()) if lang == "python"]
    assert blocks
    for body in blocks:
        exec(compile(body, "README.md", "exec"), {})


def test_the_benchmark_tables_are_what_report_renders():
    """README's headline table and bench/RESULTS.md equal what `python bench/report.py` writes from the committed
    results: regenerate them after committing new results."""
    runs = report.load(ROOT / "bench" / "results")
    text = README.read_text()
    block = text.split(report.START, 1)[1].split(report.END, 1)[0]
    assert block == "\n" + report.readme_block(runs) + "\n", "README.md's table is stale: python bench/report.py"
    plot = ROOT / "bench" / "results" / report.PLOT
    interleaved = report.load_interleaved(ROOT / "bench" / "results")
    page = report.HEADER + report.results_page(runs, plot if plot.exists() else None, interleaved=interleaved) + "\n"
    assert report.RESULTS_MD.read_text() == page, "bench/RESULTS.md is stale: python bench/report.py"
