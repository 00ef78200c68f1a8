"""Our image classifiers in timm's registry: built by ``timm.create_model``, timm's data config,
``features_only`` with the four stages, and the checks timm's own model tests make."""
import pytest
import timm
import torch
from timm.data import resolve_data_config

import mvit_backbone  # noqa: F401  (registers the models)
from mvit_backbone import load_checkpoint
from mvit_backbone.classification.timm_models import TIMM_MODEL_NAMES

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
# overrides pass through timm.create_model to ours: a slim MViTv2-T runs the protocol fast
SLIM = dict(embed_dim=32, depth=4, last_block_indexes=(0, 1, 2, 3))


def test_names_do_not_clash_with_timm_models():
    assert set(TIMM_MODEL_NAMES) >= {"mvitv2_t", "mvitv2_s", "mvitv2_b", "mvitv2_l", "mvitv2_h",
                                     "mvitv1_b16", "mvitv1_b24"}
    assert set(timm.list_models("mvitv2_*")) >= set(TIMM_MODEL_NAMES) - {"mvitv1_b16", "mvitv1_b24"}
    # timm's own family is still timm's
    assert timm.models.model_entrypoint("mvitv2_tiny").__module__ == "timm.models.mvitv2"
    for name in TIMM_MODEL_NAMES:
        entrypoint = timm.models.model_entrypoint(name)
        assert entrypoint.__module__ == "mvit_backbone.classification.timm_models"


@pytest.mark.parametrize("name", TIMM_MODEL_NAMES)
def test_create_model_builds_each_with_its_config(name):
    with torch.device("meta"):  # every size without allocating weights
        model = timm.create_model(name, pretrained=False, num_classes=10)
    assert model.get_classifier().out_features == 10
    config = resolve_data_config({}, model=model)
    size = int(name.rsplit("_", 1)[1]) if name.endswith(("_384", "_512")) else 224
    assert config["input_size"] == (3, size, size)
    assert config["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and config["interpolation"] == "bicubic"
    state = model.state_dict()  # timm's test_model_default_cfgs: the named layers exist
    assert model.pretrained_cfg["first_conv"] + ".weight" in state
    assert model.pretrained_cfg["classifier"] + ".weight" in state


@pytest.mark.parametrize("name,channels", [("mvitv2_t", [96, 192, 384, 768]),
                                           ("mvitv1_b16", [192, 384, 768, 768])])
def test_features_only_gives_four_stages(name, channels):
    with torch.device("meta"):
        model = timm.create_model(name, features_only=True)
    assert model.feature_info.channels() == channels
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    slim = timm.create_model(name, features_only=True, **SLIM).eval()
    slim_channels = slim.feature_info.channels()
    with torch.no_grad():
        maps = slim(X)
    assert [tuple(m.shape) for m in maps] == [(2, c, 64 // s, 64 // s)
                                             for c, s in zip(slim_channels, [4, 8, 16, 32])]


def test_timm_protocol_forward_head_reset_and_grad_checkpointing():
    model = timm.create_model("mvitv2_t", num_classes=10, drop_rate=0.1, **SLIM).eval()
    assert model.head.dropout.p == 0.1
    with torch.no_grad():
        tokens = model.forward_features(X)
        assert tokens.shape == (2, 4, model.num_features)
        pooled = model.forward_head(tokens, pre_logits=True)
        assert pooled.shape == (2, 256)
        torch.testing.assert_close(model.forward_head(tokens), model(X))
        final, maps = model.forward_intermediates(X, indices=2)
        assert [m.shape[1] for m in maps] == [128, 256]
        torch.testing.assert_close(final, tokens)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(X).shape == (2, 256)
    model.reset_classifier(5, "")
    with torch.no_grad():
        assert model(X).shape == (2, 4, 5)  # no pooling: per-token logits
    model = timm.create_model("mvitv2_t", num_classes=3, **SLIM).train()
    model.set_grad_checkpointing()
    model(X).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_pretrained_reads_a_local_file_of_any_layout(tmp_path):
    source = timm.create_model("mvitv2_t", num_classes=4, **SLIM).eval()
    path = tmp_path / "weights.pth"
    torch.save({"model_state": source.state_dict()}, path)
    model = timm.create_model("mvitv2_t", pretrained=True, num_classes=4,
                              pretrained_cfg_overlay=dict(file=str(path)), **SLIM).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(X), source(X))
    with pytest.raises(ValueError, match="no weights are downloaded"):
        timm.create_model("mvitv2_t", pretrained=True, **SLIM)
    fresh = timm.create_model("mvitv2_t", num_classes=4, **SLIM)
    assert not load_checkpoint(fresh, path).missing
