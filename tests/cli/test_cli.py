import subprocess
import sys

import pytest

from sidmlp_kernels.cli import build_parser, main

COMMANDS = ["prepare", "train-teacher", "eval", "distill", "quickstart", "compare", "analyze", "recommend",
            "export-users"]


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


def test_unknown_dataset_is_a_clear_error_and_touches_nothing(tmp_path, capsys):
    (tmp_path / "data.json").write_text("{}")  # an existing prepared directory
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "--dataset", "ml-10m", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--dataset: invalid choice: 'ml-10m'" in err and "ml-100k" in err
    assert (tmp_path / "data.json").read_text() == "{}"


def test_prepare_refuses_a_non_empty_directory(tmp_path, capsys):
    (tmp_path / "data.json").write_text("{}")
    assert main(["prepare", "--dataset", "ml-100k", "--out", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err and (tmp_path / "data.json").read_text() == "{}"


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "sidmlp_kernels.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "quickstart" in out.stdout


def test_student_without_teacher_rejected(tmp_path, capsys, monkeypatch):
    import sidmlp_kernels.data.prepare as prep

    monkeypatch.setattr(prep, "load_prepared", lambda d: object())
    assert main(["analyze", "--prepared", str(tmp_path), "--out", str(tmp_path / "o"), "--student", "x"]) == 2
    assert "--student needs --teacher" in capsys.readouterr().err


def test_help_shows_defaults_and_version(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    text = capsys.readouterr().out
    assert "(default: 256)" in text and "default: 0" in text  # --codebook-size, --seed
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("sidmlp-kernels ")


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    import sidmlp_kernels.cli.prepare as prepare_cli
    from sidmlp_kernels.errors import InvalidInput

    def user_error(args):
        raise InvalidInput("--levels must be >= 2, got 1")

    monkeypatch.setattr(prepare_cli, "cmd_prepare", user_error)
    assert main(["prepare", "--out", "x"]) == 2
    assert capsys.readouterr().err == "sidmlp prepare: error: --levels must be >= 2, got 1\n"

    def bug(args):
        return {}["missing"] + int("not a number")  # a programming error, not the user's input

    monkeypatch.setattr(prepare_cli, "cmd_prepare", bug)
    with pytest.raises(KeyError):
        main(["prepare", "--out", "x"])

    def plain_value_error(args):
        raise ValueError("raised by some library deep inside")

    monkeypatch.setattr(prepare_cli, "cmd_prepare", plain_value_error)
    with pytest.raises(ValueError, match="deep inside"):
        main(["prepare", "--out", "x"])


def test_validated_library_errors_are_sidmlp_errors():
    from sidmlp_kernels.configs import DistillConfig
    from sidmlp_kernels.decode.types import check_beam_args
    from sidmlp_kernels.errors import SidmlpError

    for call in (lambda: check_beam_args(0, 1), lambda: check_beam_args(2.0, 1), lambda: DistillConfig(epochs=0)):
        with pytest.raises(SidmlpError):
            call()


def test_quickstart_refuses_another_datasets_directory(tmp_path, monkeypatch, capsys):
    import types

    import sidmlp_kernels.data.prepare as prepare_mod

    monkeypatch.setattr(prepare_mod, "load_prepared", lambda d: types.SimpleNamespace(config={"dataset": "ml-100k"}))
    assert main(["quickstart", "--dataset", "ml-1m", "--out", str(tmp_path), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path} holds a quickstart on ml-100k, not --dataset ml-1m" in err


def test_train_teacher_help_says_what_the_paper_preset_costs(capsys):
    with pytest.raises(SystemExit):
        main(["train-teacher", "--help"])
    assert "hours on a 2-core CPU" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv, message", [
    (["--arch", "t5", "--objective", "sequence"], "--objective sequence needs --arch gpt2"),
    (["--arch", "gpt2", "--objective", "prefix", "--window", "5"], "--window sets the full-sequence objective"),
    (["--arch", "gpt2", "--dropout", "1.5"], "--dropout must be in [0, 1)"),
])
def test_train_teacher_objective_errors(tmp_path, capsys, argv, message):
    assert main(["train-teacher", "--prepared", str(tmp_path), "--out", str(tmp_path / "o"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_prepare_codebook_size_flag(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--out", str(tmp_path), "--codebook-size", "big"])
    assert "expected an integer or 'auto', got 'big'" in capsys.readouterr().err
