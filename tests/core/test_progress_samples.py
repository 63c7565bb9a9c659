"""The CLI's progress printer shows a run's samples, one line each, cut to the terminal's width."""

from __future__ import annotations

from lora_studio.core import SampleResult, Samples
from lora_studio.core.training.progress import SAMPLE_WIDTH, ProgressPrinter


def test_samples_print_one_line_each_with_right_or_wrong(capsys) -> None:
    long_text = "there was a fox\nwho " * 30
    ProgressPrinter(enabled=False).show(Samples(20, [
        SampleResult("Once upon a time", long_text),
        SampleResult("digit.png", "7", target="7", correct=True, probability=0.9),
        SampleResult("other.png", "1", target="4", correct=False, probability=0.6),
    ]))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("  sample: 'Once upon a time' -> 'there was a fox who")
    assert "\n" not in lines[0] and len(lines[0]) <= len("  sample: ") + SAMPLE_WIDTH
    assert lines[1].endswith("'7' [right]") and lines[2].endswith("'1' [wrong]")
