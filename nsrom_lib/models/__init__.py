"""Networks: GloRe unit, classifiers, segmentation models (pure torch, no file paths)."""
