"""Progress bars (tqdm on stderr) shared by training, sampling and feature extraction.

On a terminal they redraw twice a second; in a log file (SLURM, CI) they write a line every 30 s at most.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def bar(total=None, desc="", disable=False, unit="it", **kw):
    """A tqdm bar on stderr that disappears when done (``leave=False``); ``total``, ``desc``, ``unit`` and ``**kw`` are
    tqdm's, ``disable`` turns it off. Redraws at most every 0.5 s on a terminal, 30 s in a log file."""
    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=disable, unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5 if tty else 30.0, leave=False, **kw)
