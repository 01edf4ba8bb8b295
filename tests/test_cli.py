import subprocess
import sys

import pytest

from sidmlp_kernels.cli import build_parser, main

COMMANDS = ["prepare", "train-teacher", "eval", "distill", "quickstart", "compare", "analyze"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: sidmlp " + command in capsys.readouterr().out


def test_parser_lists_all_commands():
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text


def test_unknown_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["prepare", "--dataset", "ml-42", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'ml-42'" in err and "ml-100k" in err


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "sidmlp_kernels.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "quickstart" in out.stdout


def test_student_without_teacher_rejected(tmp_path, capsys, monkeypatch):
    import sidmlp_kernels.data.prepare as prep

    monkeypatch.setattr(prep, "load_prepared", lambda d: object())
    assert main(["analyze", "--prepared", str(tmp_path), "--out", str(tmp_path / "o"), "--student", "x"]) == 2
    assert "--student needs --teacher" in capsys.readouterr().err
