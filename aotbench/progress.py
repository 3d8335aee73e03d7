"""Progress bars (tqdm on stderr) shared by training, sampling and feature extraction."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def bar(total=None, desc="", disable=False, unit="it", **kw):
    return tqdm(total=total, desc=desc, disable=disable, unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5, leave=False, **kw)
