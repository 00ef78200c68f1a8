"""Video decoding, sampling, datasets, clip transforms, multi-view testing and mAP, on real
video files written with PyAV."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from mvit_backbone.data.video import (
    VideoDecodeError,
    clip_frame_indices,
    decode_frames,
    probe_video,
    segment_frame_indices,
    uniform_clip_starts,
)
from mvit_backbone.data.video_synthetic import CLASSES, render_video, write_synthetic_videos, write_video
from mvit_backbone.video.data import (
    KINETICS_MEAN,
    KINETICS_STD,
    TestClipTransform,
    TrainClipTransform,
    VideoClipDataset,
    VideoItem,
    VideoListError,
    read_video_list,
)
from mvit_backbone.video.metrics import average_precision, evaluate_views, mean_average_precision
from mvit_backbone.video.train import mix_clips

LEVEL0, STEP = 10, 8  # frame i is flat grey 10 + 8 i: survives compression, tells frames apart


def index_frames(n: int, height: int = 32, width: int = 32) -> np.ndarray:
    return np.stack([np.full((height, width, 3), LEVEL0 + STEP * i, np.uint8) for i in range(n)])


def frame_index(frame: np.ndarray) -> float:
    return (float(frame.mean()) - LEVEL0) / STEP


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    paths = {
        "mp4": d / "index.mp4",  # H.264 with B-frames and a key frame every 5 frames
        "webm": d / "index.webm",  # VP9, no frame count in the container
        "short": d / "short.mp4",
    }
    write_video(paths["mp4"], index_frames(30), codec="libx264", options={"g": "5"})
    write_video(paths["webm"], index_frames(30), codec="libvpx-vp9", options={"g": "5"})
    write_video(paths["short"], index_frames(5), codec="libx264")
    return paths


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_decode_returns_the_requested_frames(videos, kind):
    info = probe_video(videos[kind])
    assert (info.num_frames, info.width, info.height) == (30, 32, 32)
    assert info.exact == (kind == "mp4")
    wanted = [17, 3, 3, 29, 0, 12, 22, 8]
    frames, _ = decode_frames(videos[kind], wanted)
    assert frames.shape == (len(wanted), 32, 32, 3) and frames.dtype == np.uint8
    assert [round(frame_index(f)) for f in frames] == wanted
    assert max(abs(frame_index(f) - i) for f, i in zip(frames, wanted)) < 0.3


def test_decode_seeks_to_the_clip(videos, monkeypatch):
    """A clip near the end decodes from the key frame before it, not from the start."""
    import av

    decoded = []
    real_decode = av.container.InputContainer.decode

    def counting_decode(self, *args, **kwargs):
        for frame in real_decode(self, *args, **kwargs):
            decoded.append(frame)
            yield frame

    monkeypatch.setattr(av.container.InputContainer, "decode", counting_decode)
    frames, _ = decode_frames(videos["mp4"], [24, 26])
    assert [round(frame_index(f)) for f in frames] == [24, 26]
    assert len(decoded) <= 8  # key frames every 5: from frame 20, not the 27 from frame 0


def test_short_video_is_padded_with_its_last_frame(videos, tmp_path):
    # T x tau = 4 x 2 = 8 frames from a 5-frame video: frames 0, 2, 4, then 4 again
    assert uniform_clip_starts(5, 8, 1) == [0]
    frames, info = decode_frames(videos["short"], clip_frame_indices(0, 4, 2))
    assert info.num_frames == 5
    assert [round(frame_index(f)) for f in frames] == [0, 2, 4, 4]
    # the same through the dataset's test clips
    ds = VideoClipDataset([VideoItem(str(videos["short"]), (0,))], 2, "kinetics", 4, 2,
                          TestClipTransform(32, 32, 1), train=False, num_clips=2)
    for item in (ds[0], ds[1]):
        clip = item["clip"][0]  # (3, T, 32, 32), normalised
        grey = clip[0].mean(dim=(1, 2)) * KINETICS_STD[0] + KINETICS_MEAN[0]
        assert [round((255 * g.item() - LEVEL0) / STEP) for g in grey] == [0, 2, 4, 4]


def test_sampling_schemes():
    assert uniform_clip_starts(100, 20, 3) == [0, 40, 80]
    assert uniform_clip_starts(100, 20, 1) == [40]
    assert clip_frame_indices(5, 4, 3) == [5, 8, 11, 14]
    # test: the middle frame of each of 4 segments of 41 frames
    assert segment_frame_indices(41, 4) == [5, 15, 25, 35]
    rng = random.Random(0)
    for _ in range(20):
        idx = segment_frame_indices(41, 4, rng)
        assert all(10 * i <= f <= 10 * (i + 1) for i, f in enumerate(idx))


def test_truncated_and_non_video_files_name_the_file(videos, tmp_path):
    data = videos["mp4"].read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        decode_frames(truncated, [0, 10])
    # moov atom first (faststart): the header survives, the frames do not
    fast = tmp_path / "faststart.mp4"
    write_video(fast, index_frames(30), options={"movflags": "faststart", "g": "5"})
    data = fast.read_bytes()
    fast.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(VideoDecodeError, match=r"faststart.mp4.*truncated"):
        decode_frames(fast, [0, 29])
    webm = tmp_path / "truncated.webm"
    data = videos["webm"].read_bytes()
    webm.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(VideoDecodeError, match=r"truncated.webm"):
        decode_frames(webm, [0, 29])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 20)
    with pytest.raises(VideoDecodeError, match=r"notes.mp4: not a readable video container"):
        decode_frames(text, [0])
    with pytest.raises(VideoDecodeError, match="missing.mp4: no such file"):
        probe_video(tmp_path / "missing.mp4")


def test_unreadable_videos_are_skipped_and_counted(videos, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    items = [VideoItem(str(bad), (1,))] + [VideoItem(str(videos["mp4"]), (0,))] * 3
    train_tf = TrainClipTransform(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    strict = VideoClipDataset(items, 2, "kinetics", 4, 2, train_tf, train=True)
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        strict[0]
    # from a DataLoader worker process the error keeps its type and the file (the trainer
    # catches it by type to save its state and name the file)
    worker_loader = torch.utils.data.DataLoader(strict, batch_size=1, num_workers=1)
    with pytest.raises(VideoDecodeError, match="bad.mp4") as raised:
        next(iter(worker_loader))
    assert raised.value.path == str(bad)
    random.seed(0)
    lenient = VideoClipDataset(items, 2, "kinetics", 4, 2, train_tf, train=True, skip_unreadable=True)
    item = lenient[0]
    assert item["skipped"] >= 1 and item["valid"] and item["video"] != 0
    assert item["clip"].shape == (3, 4, 32, 32)
    test_set = VideoClipDataset(items, 2, "kinetics", 4, 2, TestClipTransform(32, 32, 1),
                                train=False, num_clips=2, skip_unreadable=True)
    loader = torch.utils.data.DataLoader(test_set, batch_size=3)
    m = evaluate_views(_MeanModel(), loader, test_set.num_videos, 2, multi_label=False)
    assert m["skipped"] == 2 and m["videos"] == 3 and m["views"] == 6


def test_read_video_list(tmp_path):
    lst = tmp_path / "train.csv"
    lst.write_text("a/x.mp4 3\n\nb/y z.mp4 0\n")
    items = read_video_list(lst)
    assert items == [VideoItem(str(tmp_path / "a/x.mp4"), (3,)), VideoItem(str(tmp_path / "b/y z.mp4"), (0,))]
    multi = tmp_path / "charades.csv"
    multi.write_text("v.mp4 1,5,7\n")
    assert read_video_list(multi, "/data", multi_label=True)[0] == VideoItem("/data/v.mp4", (1, 5, 7))
    lst.write_text("a/x.mp4 three\n")
    with pytest.raises(VideoListError, match=r"train.csv, line 1"):
        read_video_list(lst)
    with pytest.raises(VideoListError, match="outside"):
        VideoClipDataset([VideoItem("x.mp4", (5,))], 3, "kinetics", 4, 2, None, train=True)


def test_train_transform_draws_once_per_clip():
    """Crop, flip and RandAugment are the same on every frame: identical frames stay identical."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    frames = np.stack([frame] * 6)
    tf = TrainClipTransform(32, scale=(0.3, 1.0), hflip=0.5, auto_augment="rand-m9-n3-mstd0.5-inc1")
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    outputs = [tf(frames) for _ in range(8)]
    for clip in outputs:
        assert clip.shape == (3, 6, 32, 32)
        assert torch.equal(clip, clip[:, :1].expand_as(clip))
    assert len({tuple(c[:, 0].flatten()[:50].tolist()) for c in outputs}) == 8  # but differ per clip
    # random erasing: the same box in every frame (its noise differs)
    erasing = TrainClipTransform(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, reprob=1.0)
    clean = TrainClipTransform(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    changed = erasing(frames) != clean(frames)  # (3, T, 32, 32)
    boxes = changed.any(dim=0)
    assert boxes[0].any() and all(torch.equal(boxes[0], b) for b in boxes)


def test_cutmix_pastes_one_box_into_every_frame():
    from timm.data import Mixup

    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, num_classes=2)
    np.random.seed(0)
    pasted_any = False
    for _ in range(5):
        clips = torch.cat([torch.zeros(1, 3, 4, 16, 16), torch.ones(1, 3, 4, 16, 16)])
        mixed, target = mix_clips(mixup, clips, torch.tensor([0, 1]))
        assert mixed.shape == (2, 3, 4, 16, 16) and target.shape == (2, 2)
        box = mixed[0] == 1  # (C, T, H, W): where the second clip was pasted into the first
        assert all(torch.equal(box[0, 0], b) for b in box.flatten(0, 1))
        assert torch.equal(box[0, 0], mixed[1, 0, 0] == 0)  # and the first into the second
        pasted_any |= bool(box.any())
    assert pasted_any


def test_test_transform_three_crops_along_the_longer_side():
    # 32 x 96 frames: left third dark, middle grey, right third bright
    frame = np.zeros((32, 96, 3), np.uint8)
    frame[:, 32:64], frame[:, 64:] = 128, 255
    crops = TestClipTransform(32, 32, 3, mean=(0, 0, 0), std=(1, 1, 1))(np.stack([frame] * 2))
    assert crops.shape == (3, 3, 2, 32, 32)
    assert [round(c.mean().item(), 3) for c in crops] == [0.0, round(128 / 255, 3), 1.0]
    centre = TestClipTransform(32, 64, 1, mean=(0, 0, 0), std=(1, 1, 1))(np.stack([frame] * 2))
    assert centre.shape == (1, 3, 2, 32, 32)


class _MeanModel(nn.Module):
    """Logits (m, -m) of a clip's mean value m: class 0's probability is sigmoid(2 m)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3, 4))
        return torch.stack([m, -m], dim=1)


def test_multi_view_testing_averages_clips_and_crops(tmp_path):
    """A video seen through K=3 clips x 3 crops: its score is the mean of the 9 views' softmax
    probabilities, which the model's known output (a function of the mean of each view's
    decoded pixels) gives in closed form."""
    n, height, width = 30, 32, 64
    levels = np.array([LEVEL0 + STEP * i for i in range(n)], np.float64)
    frames = np.zeros((n, height, width, 3), np.uint8)
    frames[:, :, :32] = levels[:, None, None, None]  # left half: the index grey
    frames[:, :, 32:] = 255 - levels[:, None, None, None]  # right half: its complement
    path = tmp_path / "views.mp4"
    write_video(path, frames)
    T, tau = 4, 2
    ds = VideoClipDataset([VideoItem(str(path), (0,))], 2, "kinetics", T, tau,
                          TestClipTransform(32, 32, 3), train=False, num_clips=3)
    m = evaluate_views(_MeanModel(), torch.utils.data.DataLoader(ds, batch_size=2), 1, 2, False)
    assert (m["videos"], m["views"]) == (1, 9)

    expected = []
    for start in uniform_clip_starts(n, T * tau, 3):  # 0, 11, 22
        decoded, _ = decode_frames(path, clip_frame_indices(start, T, tau))
        for x0 in (0, 16, 32):  # left, centre (half and half), right crop
            mean = (decoded[:, :, x0:x0 + 32].mean() / 255 - KINETICS_MEAN[0]) / KINETICS_STD[0]
            expected.append(1 / (1 + np.exp(-2 * mean)))
    from mvit_backbone.video.metrics import ViewAggregator

    agg = ViewAggregator(1, 2, multi_label=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    with torch.no_grad():
        for batch in loader:
            agg.add(_MeanModel()(batch["clip"].flatten(0, 1)), batch["video"].repeat_interleave(3))
    scores, _ = agg.video_scores()
    assert scores[0, 0].item() == pytest.approx(np.mean(expected), abs=1e-5)
    assert scores[0].sum().item() == pytest.approx(1.0)
    assert m["top1"] == (100.0 if np.mean(expected) > 0.5 else 0.0)

    # multi-label (Charades): the maximum of the views' sigmoid scores
    agg = ViewAggregator(1, 2, multi_label=True)
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0], [-3.0, 0.5]])
    agg.add(logits, torch.zeros(3, dtype=torch.long))
    scores, _ = agg.video_scores()
    assert torch.allclose(scores[0], torch.sigmoid(torch.tensor([1.0, 2.0])).double())


def test_mean_average_precision_on_a_known_case():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.2, 0.2], [0.7, 0.9, 0.1], [0.6, 0.3, 0.4]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    # class 0: positives at ranks 1 and 3 -> (1/1 + 2/3) / 2; class 1: its positive is ranked
    # third -> 1/3; class 2 has no positive and is left out
    assert average_precision(scores[:, 0], targets[:, 0]) == pytest.approx(5 / 6)
    assert average_precision(scores[:, 1], targets[:, 1]) == pytest.approx(1 / 3)
    assert mean_average_precision(scores, targets) == pytest.approx(100 * (5 / 6 + 1 / 3) / 2)
    # ties count together: a positive tied with a negative at the top has precision 1/2
    assert average_precision(torch.tensor([0.5, 0.5, 0.1]), torch.tensor([1, 0, 0])) == pytest.approx(0.5)


def test_synthetic_classes_need_motion(tmp_path):
    rng = random.Random(0)
    size, n = 48, 20
    for name, axis, sign in (("move_left", 1, -1), ("move_right", 1, 1), ("move_up", 0, -1),
                             ("move_down", 0, 1)):
        video = render_video(name, size, n, rng).astype(int)
        background = np.median(video, axis=0)  # the shape covers each pixel only briefly
        first, last = (np.argwhere(np.abs(video[t] - background).sum(axis=2) > 30).mean(axis=0)
                       for t in (0, n - 1))
        assert sign * (last[axis] - first[axis]) > 0.2 * size  # moved along its axis
    # appearing: the first frames are the bare background, the last ones are not; disappearing
    # the other way round
    appear = render_video("appear", size, n, rng)
    disappear = render_video("disappear", size, n, rng)
    assert np.array_equal(appear[0], appear[1]) and not np.array_equal(appear[0], appear[-1])
    assert np.array_equal(disappear[-1], disappear[-2]) and not np.array_equal(disappear[0], disappear[-1])
    # the clock hand turns: every frame differs from the one before
    hand = render_video("rotate_clockwise", size, n, rng)
    assert all(not np.array_equal(a, b) for a, b in zip(hand[:-1], hand[1:]))

    root = write_synthetic_videos(tmp_path / "syn", train_per_class=2, val_per_class=1,
                                  frame_size=32, frames=12, num_classes=3)
    train = read_video_list(root / "train.csv")
    assert len(train) == 6 and sorted({i.labels[0] for i in train}) == [0, 1, 2]
    assert (root / "classes.txt").read_text().split() == list(CLASSES[:3])
    info = probe_video(train[0].path)
    assert (info.num_frames, info.width) == (12, 32)
    stamp = (root / "train.csv").stat().st_mtime_ns
    write_synthetic_videos(tmp_path / "syn", train_per_class=2, val_per_class=1,
                           frame_size=32, frames=12, num_classes=3)
    assert (root / "train.csv").stat().st_mtime_ns == stamp  # reused, not rewritten
