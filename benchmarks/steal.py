"""CPU time the hypervisor gave to other guests ("steal", /proc/stat) during a measurement.

On a shared VM a run's wall time depends on it: this machine measured 0-33% of its two CPUs
stolen in runs ten minutes apart, a large part of the spread between runs of the same code. The
benchmarks print it beside their wall times so that a figure can be read with it (CPU time, which
excludes it, is the steadier figure). Linux only; elsewhere nothing is printed.
"""

from __future__ import annotations

from pathlib import Path


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, all) jiffies of all CPUs so far, or None without /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    if fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(v) for v in fields[1:]]
    return ticks[7], sum(ticks[:8])  # user nice system idle iowait irq softirq steal (guest is in user)


class Steal:
    """``with Steal() as s: ...`` then ``s.share`` (0..1 of all CPUs' time, None if unknown) and
    ``str(s)`` (", steal 12%" or "")."""

    def __enter__(self) -> "Steal":
        self.share = None
        self._t0 = cpu_ticks()
        return self

    def __exit__(self, *exc) -> None:
        t1 = cpu_ticks()
        if self._t0 and t1 and t1[1] > self._t0[1]:
            self.share = (t1[0] - self._t0[0]) / (t1[1] - self._t0[1])

    def __str__(self) -> str:
        return "" if self.share is None else f", hypervisor steal {100 * self.share:.0f}%"
