"""Per-size MViTv2 backbone settings of the COCO recipe (MViTv2 Table 5 and its text)."""
from mvit_backbone import mvitv2_variant

# drop path per size for COCO (paper: T 0.1, S 0.3, B 0.4, L 0.5, H 0.6)
_DROP_PATH = {"T": 0.1, "S": 0.3, "B": 0.4, "L": 0.5, "H": 0.6}


def mvitv2_backbone_args(variant: str) -> dict:
    """Arguments for ``model.backbone.bottom_up.update(...)``: the variant's architecture, its
    drop path, activation checkpointing for L/H (memory), and for L channel expansion in the MLP
    of a stage's last block, as in the official MViTv2-L checkpoints."""
    args = dict(mvitv2_variant(variant), drop_path_rate=_DROP_PATH[variant])
    if variant in ("L", "H"):
        args["use_act_checkpoint"] = True
    if variant == "L":
        args["expand_in_attention"] = False
    return args
