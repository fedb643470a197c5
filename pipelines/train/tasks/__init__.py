"""BLIP's downstream tasks: their data, their fine-tune (a Ray Train job) and their evaluation."""
