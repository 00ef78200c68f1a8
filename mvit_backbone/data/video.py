"""Video decoding with PyAV, and the frame sampling of the video recipes (PySlowFast's).

Decoding reads only what a clip needs: it seeks to the key frame before the clip's first frame
and decodes forward until its last one. Frame indices refer to the video's own frame rate;
a clip asking for frames past the end of a short video gets the last frame repeated (as
PySlowFast pads short videos). A file that cannot be opened or decoded raises
:class:`VideoDecodeError` naming it.

Why PyAV: its wheels bundle FFmpeg (decoders and the H.264 / VP8 / VP9 encoders the synthetic
dataset uses), so ``pip install av`` is all a fresh machine needs. torchcodec's wheels load the
system's FFmpeg shared libraries (``libavutil.so.56`` ... ``.so.60``), which a machine without an
FFmpeg install lacks; torchvision's own video decoders are deprecated.

Sampling (the index arithmetic, no decoding):

- :func:`clip_frame_indices`: ``T`` frames every ``tau`` frames from a start (Kinetics, Charades);
- :func:`random_clip_start` / :func:`uniform_clip_starts`: where training and test clips start;
- :func:`segment_frame_indices`: one frame from each of ``T`` equal segments (Something-Something).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


class VideoDecodeError(RuntimeError):
    """A video file cannot be opened or decoded; the message names the file.

    ``VideoDecodeError(path, reason)``; with one argument, that is the whole message: a
    DataLoader worker's error reaches the main process as its type rebuilt from its message
    (any other signature turns it into a plain RuntimeError), and ``path`` is read back from it.
    """

    def __init__(self, path: str | Path, reason: str | None = None):
        if reason is None:
            message = str(path)
            found = re.search(r"cannot decode video file (.+?): ", message)
            self.path = found.group(1) if found else ""
        else:
            message = f"cannot decode video file {path}: {reason}"
            self.path = str(path)
        super().__init__(message)


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its video stream.

    ``num_frames`` is the stream's frame count when the container stores one (mp4), otherwise
    (webm, mkv) an estimate from the duration and frame rate (``exact`` False).
    """

    num_frames: int
    fps: float
    width: int
    height: int
    exact: bool


_reformatter = None


def _to_rgb(frame) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB. One reformatter per process: ``frame.to_ndarray``
    sets up a new colour converter for every frame, several times slower on small frames."""
    global _reformatter
    if _reformatter is None:
        from av.video.reformatter import VideoReformatter

        _reformatter = VideoReformatter()
    return _reformatter.reformat(frame, format="rgb24").to_ndarray()


def _open(path: str | Path):
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "no such file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoDecodeError(path, f"not a readable video container ({e})") from e
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "the file has no video stream")
    return container


def _info(container, path: str | Path) -> VideoInfo:
    import av

    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoDecodeError(path, "the video stream has no frame rate")
    fps = float(rate)
    if stream.frames > 0:
        num_frames, exact = int(stream.frames), True
    else:
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        else:
            raise VideoDecodeError(path, "the container stores neither a frame count nor a duration")
        num_frames, exact = int(round(seconds * fps)), False
    if num_frames <= 0:
        raise VideoDecodeError(path, "the video stream has no frames")
    return VideoInfo(num_frames, fps, stream.codec_context.width, stream.codec_context.height, exact)


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, frame rate and size of ``path``'s first video stream (reads the header only).

    Raises:
        VideoDecodeError: the file is missing, is not a video container or has no video stream.
    """
    container = _open(path)
    try:
        return _info(container, path)
    finally:
        container.close()


def decode_frames(path: str | Path, indices: Sequence[int] | Callable[[VideoInfo], Sequence[int]]
                  ) -> tuple[np.ndarray, VideoInfo]:
    """The frames at ``indices`` (any order, repeats allowed) of ``path``, RGB. ``indices`` may
    be a function of the video's :class:`VideoInfo` (a clip sampler that needs the frame count),
    called once the header is read.

    Indices past the last frame give the last frame (a clip longer than the video is padded by
    repeating it); negative indices give the first. Only the span from the key frame before
    ``min(indices)`` to ``max(indices)`` is decoded.

    Returns:
        frames (len(indices), H, W, 3) uint8, and the video's :class:`VideoInfo`.

    Raises:
        VideoDecodeError: the file cannot be opened, decoding fails, or it ends well before the
            frame count its header declares (a truncated file). With an estimated frame count
            (webm) a shortfall of up to ``max(2, 5%)`` frames is rounding, filled by the last
            decoded frame.
    """
    import av

    container = _open(path)
    try:
        info = _info(container, path)
        if callable(indices):
            indices = indices(info)
        if len(indices) == 0:
            raise ValueError("decode_frames needs at least one frame index")
        wanted = [min(max(int(i), 0), info.num_frames - 1) for i in indices]
        first, last = min(wanted), max(wanted)
        stream = container.streams.video[0]
        time_base = float(stream.time_base)
        start_pts = stream.start_time or 0
        if first > 0:
            # the key frame at or before the first wanted frame; half a frame early so that
            # timestamps rounded down by the container still land on it
            target = start_pts + int((first - 0.5) / info.fps / time_base)
            container.seek(max(target, start_pts), stream=stream, backward=True, any_frame=False)
        got: dict[int, np.ndarray] = {}
        last_decoded = -1
        need = set(wanted)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            index = int(round((frame.pts - start_pts) * time_base * info.fps))
            last_decoded = max(last_decoded, index)
            if index in need:
                got[index] = _to_rgb(frame)
            if index >= last:
                break
    except av.error.FFmpegError as e:
        raise VideoDecodeError(path, f"decoding failed ({e})") from e
    finally:
        container.close()
    if not got:
        raise VideoDecodeError(path, f"no frame decoded in the range {first}..{last} of "
                                     f"{info.num_frames} frames (truncated or corrupt file)")
    missing = sorted(need - set(got))
    if missing:
        shortfall = info.num_frames - 1 - last_decoded
        if info.exact or shortfall > max(2, info.num_frames // 20):
            raise VideoDecodeError(path, f"decoding stopped at frame {last_decoded} although the "
                                         f"file declares {info.num_frames} frames (truncated file)")
        # an estimated frame count a frame or two too high: the last decoded frame stands in
        final = got[max(got)]
        for i in missing:
            got[i] = final
    return np.stack([got[i] for i in wanted]), info


# --------------------------------------------------------------------------- sampling


def clip_frame_indices(start: int, num_frames: int, sampling_rate: int) -> list[int]:
    """``num_frames`` indices ``start, start + tau, ...`` (``tau = sampling_rate``); those past
    the video's end are clamped by :func:`decode_frames` (the last frame repeats)."""
    return [start + i * sampling_rate for i in range(num_frames)]


def clip_span(num_frames: int, sampling_rate: int) -> int:
    """Frames of the video a clip of ``num_frames`` every ``sampling_rate`` covers: T x tau."""
    return num_frames * sampling_rate


def random_clip_start(video_frames: int, span: int, rng: random.Random) -> int:
    """A uniformly random start of a clip covering ``span`` frames (0 if the video is shorter)."""
    return rng.randint(0, max(video_frames - span, 0))


def uniform_clip_starts(video_frames: int, span: int, num_clips: int) -> list[int]:
    """Starts of ``num_clips`` test clips spread uniformly from the first to the last possible
    start (one clip: the centre one), as PySlowFast's ``get_start_end_idx`` with offsets."""
    delta = max(video_frames - span, 0)
    if num_clips == 1:
        return [delta // 2]
    return [int(round(delta * k / (num_clips - 1))) for k in range(num_clips)]


def segment_frame_indices(video_frames: int, num_frames: int,
                          rng: random.Random | None = None) -> list[int]:
    """Segment-based sampling (TSN; PySlowFast's Something-Something): the video is cut into
    ``num_frames`` equal segments and one frame is taken from each, a random one in training
    (``rng`` given), the middle one at test (``rng`` None)."""
    seg = (video_frames - 1) / num_frames
    out = []
    for i in range(num_frames):
        lo, hi = int(round(seg * i)), int(round(seg * (i + 1)))
        out.append(rng.randint(lo, hi) if rng is not None else (lo + hi) // 2)
    return out

