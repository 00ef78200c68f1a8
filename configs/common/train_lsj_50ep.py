"""The strong MViTv2-L schedule of the official ``cascade_mask_rcnn_mvitv2_l_in21k_lsj_50ep.py``:
the 3x optimizer settings with lr 1e-4, 50 epochs of 64 images (92187 iterations), lr x0.1 at
iterations 81944 and 88773, 250 warm-up iterations."""
from .train_3x import lr_multiplier, optimizer, train

train.max_iter = 92187  # 50 epochs of 118k images at 64 per iteration
lr_multiplier.scheduler.milestones = [81944, 88773]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 250 / train.max_iter
optimizer.lr = 1e-4
