"""The official MViTv2 COCO schedule (3x, as detectron2's projects/MViTv2 configs and Table 5):
AdamW (0.9, 0.999), lr 1.6e-4 at batch 64, weight decay 0.1 except on position embeddings and
rel-pos tables, 36 epochs (67.5k iterations of 64 images), lr x0.1 at epochs 28 and 33, 250
warm-up iterations, AMP with fp16 gradient compression."""
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True  # used on CUDA only
train.ddp.fp16_compression = True
train.max_iter = 67500
train.eval_period = 5000
train.checkpointer.period = 5000
train.init_checkpoint = ""

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[52500, 62500, 67500]
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.lr = 1.6e-4
optimizer.betas = (0.9, 0.999)
optimizer.weight_decay = 0.1
optimizer.params.overrides = {
    name: {"weight_decay": 0.0} for name in ("pos_embed", "rel_pos_h", "rel_pos_w")
}
