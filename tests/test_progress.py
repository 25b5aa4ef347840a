"""The command line's progress line (oxbak._progress), driven by a fake clock: no timing."""

from __future__ import annotations

import io
import math

import pytest

from oxbak._progress import ProgressLine, Rate, render

MB = 1_000_000


def test_render_shows_bytes_percentage_rate_and_eta() -> None:
    line = render("packing", 50 * MB, 100 * MB, 10 * MB, width=100)
    assert line == (
        "packing [###############...............]  50%  50.0/100.0 MB  10.0 MB/s  ETA 0:05"
    )


@pytest.mark.parametrize(
    ("done", "total", "rate", "expected"),
    [
        (0, 100 * MB, None, "  0%  0.0/100.0 MB  -- B/s  ETA --:--"),  # no rate yet
        (0, 100 * MB, 0.0, "  0%  0.0/100.0 MB  0 B/s  ETA --:--"),  # stalled
        (1 * MB, 3_601 * MB + 1, 1 * MB, "  0%  0.0/3.6 GB  1.0 MB/s  ETA 1:00:01"),
        (0, 2 * 10**12, 1_000.0, "  0%  0.0/2.0 TB  1.0 KB/s  ETA >99h"),
        (5 * 10**9, 5 * 10**9, 2.5e9, "100%  5.0/5.0 GB  2.5 GB/s  ETA 0:00"),
        (700, 900, 512.0, " 77%  700/900 B  512 B/s  ETA 0:01"),
        (0, 0, None, "100%  0/0 B  -- B/s  ETA 0:00"),  # nothing to do is done
        (12 * MB, 10 * MB, 1 * MB, "100%  12.0/10.0 MB  1.0 MB/s  ETA 0:00"),  # past the bound
    ],
)
def test_render_numbers(done: int, total: int, rate: float | None, expected: str) -> None:
    assert render("x", done, total, rate, width=200).endswith("] " + expected)


def test_render_fits_the_terminal() -> None:
    assert "[" + "." * 30 + "]" in render("unpacking", 0, 2 * MB, 1.0, width=200)  # at most 30
    assert "[#####.....]" in render("unpacking", 1 * MB, 2 * MB, 3 * MB, width=60)  # narrower
    for width in (80, 60, 50, 40, 20, 1, 0):
        line = render("unpacking", 1 * MB, 2 * MB, 3 * MB, width=width)
        assert len(line) <= max(width - 1, 0), (width, line)
    assert "[" not in render("unpacking", 1 * MB, 2 * MB, 3 * MB, width=50)  # no room: no bar


def test_rate_is_smoothed_over_time() -> None:
    rate = Rate(tau=2.0)
    assert rate.update(0.0, 0) is None  # one sample: no rate yet
    assert rate.update(1.0, 10 * MB) == pytest.approx(10 * MB)
    assert rate.update(1.0, 99 * MB) == pytest.approx(10 * MB)  # no time passed: unchanged
    assert rate.update(2.0, 20 * MB) == pytest.approx(10 * MB)  # steady
    # A stall: the rate falls as the stalled second's weight says, not to zero at once...
    stalled = (1 - math.exp(-1)) * math.exp(-0.5) / (1 - math.exp(-1.5))
    assert rate.update(3.0, 20 * MB) == pytest.approx(10 * MB * stalled)
    assert 0.45 < stalled < 0.55
    # ... and the weight depends on the time passed, not on the number of samples.
    one = Rate(tau=2.0)
    for now, done in ((0.0, 0), (1.0, 10 * MB), (3.0, 10 * MB)):
        one.update(now, done)
    many = Rate(tau=2.0)
    for now, done in ((0.0, 0), (1.0, 10 * MB), (1.5, 10 * MB), (2.0, 10 * MB), (3.0, 10 * MB)):
        many.update(now, done)
    assert one.value == pytest.approx(many.value)
    # The first value is the rate of the first interval, not dragged toward zero.
    start = Rate(tau=2.0)
    start.update(0.0, 0)
    assert start.update(0.1, 20 * MB) == pytest.approx(200 * MB)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_line_redraws_at_most_ten_times_a_second_and_at_the_end() -> None:
    clock, out = FakeClock(), io.StringIO()
    line = ProgressLine("packing", out, clock=clock, columns=100)
    line.update(1 * MB, 100 * MB)  # the first call draws
    for n in range(2, 50):  # calls within the same tenth of a second do not
        clock.now += 0.001
        line.update(n * MB, 100 * MB)
    assert out.getvalue().count("\r") == 1
    clock.now = 101.0
    line.update(10 * MB, 100 * MB)
    assert out.getvalue().count("\r") == 2
    assert out.getvalue().endswith("  10%  10.0/100.0 MB  10.0 MB/s  ETA 0:09\x1b[K")
    clock.now += 0.01
    line.update(100 * MB, 100 * MB)  # the last call draws whenever it comes
    assert out.getvalue().count("\r") == 3 and " 100% " in out.getvalue().split("\r")[-1]
    line.close()
    assert out.getvalue().endswith("\r\x1b[K") and not line.shown


def test_a_message_is_written_on_an_erased_line_and_the_bar_comes_back() -> None:
    clock, out = FakeClock(), io.StringIO()
    line = ProgressLine("verifying", out, clock=clock, columns=100)
    clock.now += 2.0
    line.update(20 * MB, 40 * MB)
    bar = out.getvalue()[1:-3]  # between "\r" and the erase
    assert bar.startswith("verifying [") and "10.0 MB/s" in bar and "ETA 0:02" in bar
    with line.hidden():
        out.write("oxbak: warning: something\n")
    assert out.getvalue() == (
        f"\r{bar}\x1b[K" + "\r\x1b[K" + "oxbak: warning: something\n" + f"\r{bar}\x1b[K"
    )
    line.close()
    with line.hidden():  # nothing shown: nothing erased, nothing drawn again
        out.write("after\n")
    assert out.getvalue().endswith("\r\x1b[Kafter\n")
