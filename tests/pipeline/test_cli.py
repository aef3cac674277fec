"""Command-line contract: wrong values stop at once with one line naming the flag."""

import pytest

from pipeline.cli import main


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["run", "--epochs", "0"], "--epochs"),
        (["run", "--architectures", "lstm,resnet"], "--architectures"),
        (["run", "--source", "csv"], "--source"),
        (["run", "--epochs", "two"], "--epochs"),
        (["run", "--task-runner", "spark"], "--task-runner"),
        (["run", "--config", "missing.yaml"], "--config"),
        (["promote"], "--version"),
    ],
)
def test_wrong_values_fail_fast_naming_the_flag(in_tmp_cwd, capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert flag in err and err.startswith("sketchpipe")
