"""pscfast._flags: command-line flags from a frozen config dataclass (types, defaults, help, precedence)."""
from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import pytest

from pscfast._config import check_types
from pscfast._flags import ConfigParser, field_help


@dataclasses.dataclass(frozen=True)
class Toy:
    CHOICES: ClassVar[dict] = {"mode": ("fast", "exact")}

    # the size of one side,
    # in pixels
    size: int = 8                        # (a power of two)
    scale: float = 0.5                   # a float; an int is accepted
    name: str | None = None              # optional: "none" on the command line
    mode: str = "fast"                   # one of CHOICES
    on: bool = True                      # --on / --no-on
    compile: bool | str = False          # --compile, --compile NAME, --no-compile
    shape: tuple[int, ...] = (1, 2)      # any number of ints
    pair: tuple[float, float] = (0.0, 1.0)  # exactly two floats
    first: int = 1                       # set by the alias --both
    second: int = 2                      # set by the alias --both
    told: int = dataclasses.field(default=0, metadata={"help": "from the metadata"})  # not this comment

    def __post_init__(self):
        check_types(self)
        if self.size < 1:
            raise ValueError(f"Toy: size must be positive, got {self.size}")


def _parser():
    return ConfigParser(Toy, "toy", aliases={"both": ("first", "second")})


def test_each_type_has_its_flag():
    cfg = _parser().parse(["--size", "16", "--scale", "2", "--name", "x", "--mode", "exact", "--no-on", "--compile",
                           "--shape", "3", "4", "5", "--pair", "0.25", "0.75"])
    assert cfg == Toy(size=16, scale=2.0, name="x", mode="exact", on=False, compile=True, shape=(3, 4, 5),
                      pair=(0.25, 0.75))
    assert _parser().parse([]) == Toy()
    assert _parser().parse(["--name", "None"]).name is None
    assert _parser().parse(["--compile", "aot_eager"]).compile == "aot_eager"
    assert _parser().parse(["--compile", "x", "--no-compile"]).compile is False


def test_aliases_apply_before_the_fields_own_flags():
    assert (_parser().parse(["--both", "5"]).first, _parser().parse(["--both", "5"]).second) == (5, 5)
    cfg = _parser().parse(["--second", "7", "--both", "5"])
    assert (cfg.first, cfg.second) == (5, 7)


def test_the_config_file_is_under_the_flags(tmp_path):
    path = tmp_path / "toy.json"
    path.write_text(json.dumps({"size": 4, "shape": [9, 9], "mode": "exact"}))
    cfg = _parser().parse(["--config", str(path), "--size", "32"])
    assert (cfg.size, cfg.shape, cfg.mode) == (32, (9, 9), "exact")


@pytest.mark.parametrize("argv, words", [
    (["--size", "x"], "argument --size: invalid int value: 'x'"),
    (["--name"], "argument --name: expected one argument"),
    (["--mode", "slow"], "argument --mode: invalid choice: 'slow'"),
    (["--pair", "1"], "argument --pair: expected 2 arguments"),
    (["--size", "0"], "Toy: size must be positive, got 0"),
    (["--on", "1"], "unrecognized arguments: 1"),
])
def test_bad_values_exit_with_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        _parser().parse(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and words in err and "Traceback" not in err, err


def test_help_comes_from_metadata_or_comments_and_lists_the_defaults():
    helps = field_help(Toy)
    assert helps["size"] == "the size of one side, in pixels (a power of two)"
    assert helps["told"] == "from the metadata" and helps["first"] == "set by the alias --both"
    text = " ".join(_parser().parser.format_help().split())
    for words in ("--size SIZE the size of one side, in pixels (a power of two) (default: 8)",
                  "--name NAME optional: \"none\" on the command line (default: none)",
                  "--on, --no-on --on / --no-on (default: True)", "--shape SHAPE [SHAPE ...]",
                  "(default: 1 2)", "--both BOTH sets first and second"):
        assert words in text, words


def test_a_field_of_a_type_without_a_flag_is_refused_when_the_parser_is_built():
    @dataclasses.dataclass(frozen=True)
    class Odd:
        table: dict = dataclasses.field(default_factory=dict)  # no flag for a dict

    with pytest.raises(TypeError, match=r"Odd\.table: no command-line flag for the type dict"):
        ConfigParser(Odd, "odd")
