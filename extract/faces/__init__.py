"""Raw video -> aligned face frames: detect (MTCNN, 5 landmarks), track the main face, align to a template."""
