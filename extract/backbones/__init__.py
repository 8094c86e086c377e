"""Backbones per modality (face, pose, audio), where their weights come from, and the registry that builds them."""
