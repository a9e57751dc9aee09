"""Progress on long steps: a non-terminal gets periodic lines with done/total, rate and ETA; a quiet
stage gets nothing; the tqdm-style surface the stages use keeps working."""

from __future__ import annotations

import io
import re
import time

from domain_embed.rundir import Progress, StageContext, _fmt_secs
from domain_embed.stages import STAGES


def test_non_tty_prints_periodic_lines_with_rate_and_eta():
    out = io.StringIO()
    p = Progress(total=40, desc="mine: embed passages", unit="text", interval=0.05, stream=out)
    for _ in range(4):
        time.sleep(0.06)
        p.update(10)
    p.set_postfix(loss=0.5)
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 4, lines
    first = lines[0]
    assert first.startswith("[mine: embed passages] 10/40 (25.0%)")
    assert re.search(r"\d+(\.\d+)? text/s", first) and "elapsed" in first and "ETA " in first
    assert lines[-1].startswith("[mine: embed passages] 40/40 (100.0%)") and "ETA" not in lines[-1]
    assert lines[-1].endswith("; loss=0.5")


def test_short_steps_and_quiet_stages_print_nothing(tmp_path):
    out = io.StringIO()
    p = Progress(total=3, desc="x", interval=60, stream=out)
    p.update(3)
    p.close()
    assert out.getvalue() == ""  # done before the first interval: no noise
    ctx = StageContext(STAGES["mine"], tmp_path, cfg=None, quiet=True)
    bar = ctx.progress(range(5), desc="search")
    assert list(bar) == [0, 1, 2, 3, 4] and bar.disable and bar.n == 5


def test_iteration_without_total_and_the_tty_bar():
    out = io.StringIO()
    items = list(Progress(iter(range(3)), desc="chunk", interval=0, stream=out))
    assert items == [0, 1, 2] and out.getvalue().splitlines()[-1].startswith("[chunk] 3, ")
    tty = io.StringIO()
    with Progress(total=2, desc="bar", stream=tty, tty=True, leave=True) as b:  # callers' tqdm kwargs pass through
        b.update(2)
    assert "2/2" in tty.getvalue()


def test_time_format():
    assert [_fmt_secs(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]
