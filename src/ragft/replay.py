"""The door through which every scoring of a model passes, so that a trained unit's model can be
recorded or replayed (ragft.units).

`@replayable("generate")` on a function whose first argument is a model: a plain `LoadedLM` runs the
function; a trained unit's model (anything with a `unit_call` method, `ragft.units.UnitLM`) is handed
the call, the undecorated function and its arguments, and answers with the stored outcome or
computes and stores it. This module imports nothing of the package, so the scorers can use it and
`ragft.units` can import the scorers.
"""

from __future__ import annotations

import functools


def replayable(op: str):
    def wrap(fn):
        @functools.wraps(fn)
        def call(lm, *args, **kwargs):
            unit_call = getattr(lm, "unit_call", None)
            if unit_call is None:
                return fn(lm, *args, **kwargs)
            return unit_call(op, fn, args, kwargs)

        call.unwrapped = fn
        return call

    return wrap
