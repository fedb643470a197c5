"""BLIP's downstream tasks over the MED: VQA, NLVR2, visual dialog, and the video transfers.

Each module holds a task's head (where it has one), its forward pass and its scoring; the losses
are computed here too, since each is one line over the task's own logits. No Ray, no data files:
pipelines/train/tasks/ reads the data and trains.
"""
