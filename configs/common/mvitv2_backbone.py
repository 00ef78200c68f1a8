"""Per-size MViTv2 backbone settings of the COCO recipe, as in detectron2's official
``projects/MViTv2`` configs (which produced the published AP)."""
from mvit_backbone import mvitv2_variant

# Drop path per size, the official configs' values. The paper's App. B.3 text gives T 0.1 and
# S 0.3 (B 0.4, L 0.5, H 0.6 agree).
DROP_PATH = {"T": 0.2, "S": 0.2, "B": 0.4, "L": 0.5, "H": 0.6}


def mvitv2_backbone_args(variant: str) -> dict:
    """Arguments for ``model.backbone.bottom_up.update(...)``: the variant's architecture and
    drop path, and activation checkpointing for H (as the official H config). L deliberately
    differs: channels expand in the MLP of a stage's last block, the layout of the official
    MViTv2-L ImageNet checkpoints (detectron2's MViT always expands in the attention)."""
    args = dict(mvitv2_variant(variant), drop_path_rate=DROP_PATH[variant])
    if variant == "H":
        args["use_act_checkpoint"] = True
    if variant == "L":
        args["expand_in_attention"] = False
    return args
