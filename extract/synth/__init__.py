"""``fer data synth``: synthetic datasets whose faces, voices and bodies carry class signal."""

from fer.extract.synth.layouts import ANNOTATION_HEADER, LAYOUTS  # noqa: F401
from fer.extract.synth.writer import CORRUPT_KINDS, SynthSummary, synthesize  # noqa: F401
