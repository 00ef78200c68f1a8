"""The strong MViTv2-L/H schedule: the 3x optimizer settings over 50 epochs of large-scale
jitter (92.5k iterations of 64 images), steps at about 89% and 96% of training."""
from .train_3x import lr_multiplier, optimizer, train

train.max_iter = 92500
lr_multiplier.scheduler.milestones = [82200, 89100, 92500]
lr_multiplier.warmup_length = 250 / train.max_iter
