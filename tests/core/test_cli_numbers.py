"""spmd-launch refuses malformed numbers with a LaunchError before starting anything."""

from __future__ import annotations

import pytest

from launch.cli import check, parser
from spmd.errors import LaunchError


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--mesh", "99999999999999999999"], "devices"),
        (["--mesh", "2x4", "--timeout", "-5"], "--timeout -5"),
        (["--mesh", "2x4", "--timeout", "nan"], "--timeout nan"),
        (["--mesh", "2x4", "--timeout", "inf"], "--timeout inf"),
        (["--mesh", "2x4", "--timeout", "0"], "--timeout 0"),
        (["--mesh", "2", "--processes", "99999999999999999999"], "--processes"),
        (["--mesh", "2x-4"], "malformed mesh"),
        (["--mesh", "2.5x4"], "malformed mesh"),
    ],
)
def test_malformed_numbers_are_launch_errors(argv, fragment, tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('never runs')\n")
    with pytest.raises(LaunchError, match="hint|must|malformed|more than") as err:
        check(parser().parse_args([*argv, str(script)]))
    assert fragment in str(err.value)


def test_a_good_command_line_passes(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('ok')\n")
    shape, names = check(parser().parse_args(["--mesh", "2x4", "--timeout", "2.5", str(script)]))
    assert shape == (2, 4) and names == ("data", "model")
