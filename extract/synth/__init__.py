"""``fer data synth``: synthetic datasets whose faces, voices and bodies carry class signal."""

from fer.extract.synth.writer import ANNOTATION_HEADER, CORRUPT_KINDS, SynthSummary, synthesize  # noqa: F401
