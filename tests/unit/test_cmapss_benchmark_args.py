"""`edge-trainer benchmark cmapss` refuses counts that make no sense as usage errors, not tracebacks later."""

from __future__ import annotations

import argparse

import pytest

from trainer.benchmarks.cmapss import add_arguments


def parse(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edge-trainer benchmark cmapss")
    add_arguments(parser)
    return parser.parse_args(["--data-dir", "d", "--out", "o", *extra])


@pytest.mark.parametrize(("argv", "message"), [
    (["--epochs", "-1"], "argument --epochs: must be at least 1, got -1"),
    (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["--max-units", "-1"], "argument --max-units: must be at least 1, got -1"),
    (["--rootcause-trials", "-5"], "argument --rootcause-trials: must be at least 0, got -5"),
    (["--epochs", "two"], "argument --epochs: expected an integer, got 'two'"),
])
def test_bad_counts_are_usage_errors(argv: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_good_counts_pass() -> None:
    args = parse("--epochs", "3", "--max-units", "2", "--rootcause-trials", "0")
    assert (args.epochs, args.max_units, args.rootcause_trials) == (3, 2, 0)
