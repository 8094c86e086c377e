"""fer: multimodal dynamic facial expression recognition with an offline feature cache."""

__version__ = "0.1.0"
