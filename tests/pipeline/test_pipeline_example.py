"""examples/pipeline.py trains on a 2x2x2 data x pipe x model mesh and ends with the same
parameters as the unpipelined model, for every schedule."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipeline.py"


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["1f1b", "gpipe", "interleaved"])
def test_example_matches_the_unpipelined_model(schedule):
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--schedule",
            schedule,
            "--steps",
            "3",
            "--microbatches",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    gap = float(re.search(r"parameter after 3 steps: (\S+)", out).group(1))
    assert gap < 1e-5
    losses = re.findall(r"loss (\S+)\s+unpipelined (\S+)", out)
    assert len(losses) == 3 and all(abs(float(a) - float(b)) < 1e-5 for a, b in losses)
    assert f"pipeline {schedule} tick 0: forward stage 0->1 microbatch 0" in out
    assert re.search(r"bubble \d+\.\d%", out)
