"""Datasets and file formats: the VOC layout, SynthVOC, PNG helpers. No networks here."""
