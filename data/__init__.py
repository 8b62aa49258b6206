"""Datasets and transforms: Cityscapes on its official layout, unlabeled image folders, synthetic scenes."""
