"""Tolerances for comparing floating-point features that follow the dtype and the kernels' accuracy, not one
CPU's rounding."""

from __future__ import annotations

import torch

SCALE_ULPS = 256
"""How many units of the dtype's precision, at the features' scale, two forwards of one network may differ
by."""


def assert_close_at_scale(got, want, ulps: int = SCALE_ULPS) -> None:
    """``got`` equals ``want`` up to ``ulps`` units in the last place of ``want``'s scale (its largest
    magnitude) in ``want``'s dtype.

    Two forwards of one network agree only up to rounding: their kernels split and order the sums
    differently with the number of threads, the batch, the CPU's vector width and the library's choice of
    algorithm, and the error grows with the features' scale, not with each element's own size (a feature
    near zero carries the rounding of the large sums it came from). Measured on a 2-core AMD EPYC with 1 to
    4 threads: at most 7 ulps of the scale. A wrong transform, layer or weight changes features by percents
    of the scale, far beyond this.
    """
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    tol = ulps * torch.finfo(want.dtype).eps * float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0.0, atol=tol)
