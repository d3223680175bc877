"""The camera process, run for real: ``tolk service camera`` with a file source, real ZeroMQ.

A test stands in for capture: it binds capture's state socket and publishes ``SpeechActivity``
as capture does. Scenes are made at test time with Pillow/OpenCV and replayed by the file
source at ``file_speed = 10``: every frame carries the scene's own time, so 30 s of speech go
through the real sampling policy in about 3 s of wall time.
"""

from __future__ import annotations

import io
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import numpy as np
import zmq
from PIL import Image

from daemon.bus import Bus, endpoint
from daemon.messages import Channel, Heartbeat, Message, SpeechActivity, VideoFrame, topic_of
from tests.helpers import REPO, NotifySocket, running, service_env, tolk_cmd, wait_until

S = 1_000_000_000
SPEED = 10  # the file source replays scenes 10x faster than real time
FPS = 10  # frames per second of the generated scenes


def tokens(width: int, height: int) -> float:
    """What a frame costs: 0.5 token per 28x28 tile, sides rounded up to whole tiles."""
    return max(1, -(-width // 28)) * max(1, -(-height // 28)) / 2


def scene(width: int, height: int, rng: np.random.Generator, noise: float = 4.0) -> np.ndarray:
    """A kiosk counter: a wall, a desk, a head, and a camera's sensor noise."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.float32)
    img[..., 0], img[..., 1], img[..., 2] = 80 + 70 * x / width, 120 + 30 * y / height, 150
    img[int(height * 0.7) :] = (120, 85, 50)
    img[(x - width / 2) ** 2 + (y - height * 0.4) ** 2 < (height * 0.15) ** 2] = (210, 170, 140)
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def static_folder(path: Path, count: int = 5) -> Path:
    """A static scene as a camera sees it: the same picture, new sensor noise in every frame."""
    path.mkdir()
    rng = np.random.default_rng(7)
    for k in range(count):
        Image.fromarray(scene(1280, 720, rng)).save(path / f"frame{k:03d}.jpg", quality=90)
    return path


def moving_video(path: Path, seconds: int = 30) -> Path:
    """A scene that never stops changing: a large card sweeping across, 640x360 MJPEG at 10 fps."""
    import cv2

    width, height = 640, 360
    base = scene(width, height, np.random.default_rng(8))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (width, height))
    assert writer.isOpened()
    for k in range(seconds * FPS):
        frame = base.copy()
        left = (k * 40) % (width - 160)
        frame[40:320, left : left + 160] = (250, 250, 240) if k % 2 else (20, 30, 200)
        writer.write(frame[:, :, ::-1])
    writer.release()
    return path


def assert_valid_jpeg(frame: VideoFrame, max_tokens: float, aspect: float) -> None:
    """What the service would check, and what the config asked for."""
    assert len(frame.jpeg) <= 500_000
    img = Image.open(io.BytesIO(frame.jpeg))
    assert img.format == "JPEG"
    img.load()  # decodes the whole picture: a truncated or corrupt JPEG raises here
    assert img.size == (frame.width, frame.height)
    assert tokens(frame.width, frame.height) <= max_tokens
    assert abs(frame.width / frame.height - aspect) < 0.02
    # The budget is used, not wasted on a needlessly small picture.
    assert frame.width * frame.height >= 0.85 * max_tokens * 2 * 28 * 28


class CameraUnderTest:
    """A running camera process, what it publishes, and a stand-in capture that says who speaks."""

    def __init__(self, rundir: Path, sd: NotifySocket, proc: subprocess.Popen[bytes], config: Path) -> None:
        self.rundir, self.sd, self.proc, self.config = rundir, sd, proc, config
        self.capture = Bus("capture", rundir)
        self.ctx = zmq.Context()
        self.state = self.ctx.socket(zmq.SUB)
        self.state.setsockopt(zmq.SUBSCRIBE, topic_of(Heartbeat))
        self.state.connect(endpoint("camera", Channel.STATE, rundir))
        self.bulk = self.ctx.socket(zmq.SUB)
        self.bulk.setsockopt(zmq.SUBSCRIBE, topic_of(VideoFrame))
        self.bulk.connect(endpoint("camera", Channel.BULK, rundir))
        self.last: Heartbeat | None = None

    def close(self) -> None:
        self.state.close(0)
        self.bulk.close(0)
        self.ctx.term()
        self.capture.close()

    def heartbeat(self, pred: Callable[[Heartbeat], bool], what: str, timeout: float = 10.0) -> Heartbeat:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.state.poll(int(left * 1000)):
                msg = Message.from_frames(self.state.recv_multipart())
                assert isinstance(msg, Heartbeat)
                self.last = msg
                if pred(msg):
                    return msg
        last = self.last
        raise AssertionError(f"no heartbeat with {what}; last: {last and (last.state, last.status, last.counters)}")

    def speak(self, speaking: bool) -> Heartbeat:
        """Publish speech as capture does, until the camera's heartbeat shows it took it."""
        want = "sampling (speech)" if speaking else "waiting for speech"
        # A heartbeat sent before this call may still be queued: its counters would be stale.
        since = time.monotonic_ns()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.capture.publish(SpeechActivity(speaking=speaking))  # repeated: the first may meet no subscriber
            try:
                return self.heartbeat(lambda hb: hb.t >= since and want in hb.status, want, timeout=0.3)
            except AssertionError:
                continue
        raise AssertionError(f"the camera never said {want!r}: {self.last and self.last.status}")

    def frames(self, wait_s: float = 0.0) -> list[VideoFrame]:
        got = []
        while self.bulk.poll(int(wait_s * 1000)):
            msg = Message.from_frames(self.bulk.recv_multipart())
            assert isinstance(msg, VideoFrame)
            got.append(msg)
            wait_s = 0.0
        return got

    def reload(self, config_text: str) -> None:
        self.config.write_text(config_text)
        self.proc.send_signal(signal.SIGHUP)

    def speak_for_scene_seconds(self, seconds: float) -> tuple[Heartbeat, Heartbeat]:
        """Speech that covers at least ``seconds`` of the scene (counted in frames read)."""
        start = self.speak(True)
        need = start.counters["frames_read"] + seconds * FPS
        self.heartbeat(lambda hb: hb.counters["frames_read"] >= need, f"{need} frames read", timeout=seconds)
        return start, self.speak(False)




@contextmanager
def camera(rundir: Path, sd: NotifySocket, config_text: str, **env: str) -> Iterator[CameraUnderTest]:
    config = rundir / "tolk.toml"
    config.write_text(config_text)
    environ = service_env(rundir, NOTIFY_SOCKET=sd.path, WATCHDOG_USEC="2000000", **env)
    log = rundir / "camera.log"
    with running(tolk_cmd("service", "camera", "--config", str(config)), environ, log) as proc:
        cam = CameraUnderTest(rundir, sd, proc, config)
        try:
            wait_until(lambda: any("READY=1" in m for m in sd.messages), 15, what="READY=1")
            yield cam
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(10)
            except subprocess.TimeoutExpired:
                code = None
            assert code == 0, log.read_text()
        finally:
            cam.close()


def file_config(source: Path, **camera: object) -> str:
    keys = {"source": f"file:{source}", "max_fps": 2, "file_fps": FPS, "file_speed": SPEED, **camera}
    lines = [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in keys.items()]
    return "[camera]\n" + "\n".join(lines).replace("'", '"') + "\n"


# --- the acceptance --------------------------------------------------------------------------


def test_a_static_scene_during_30_s_of_speech_sends_one_frame(rundir: Path, sd: NotifySocket) -> None:
    folder = static_folder(rundir / "static")
    with camera(rundir, sd, file_config(folder, max_tokens=150)) as cam:
        cam.heartbeat(lambda hb: "waiting for speech" in hb.status, "waiting for speech")
        first: list[VideoFrame] = []
        deadline = time.monotonic() + 8
        while not first and time.monotonic() < deadline:
            # Each try is a new utterance, whose first frame must go right away (not after a
            # sampling period). Tries again only because our bulk subscription may still be
            # joining (ZeroMQ drops what a PUB sends before the SUB has connected).
            cam.capture.publish(SpeechActivity(speaking=False))
            said_at = time.monotonic()
            cam.capture.publish(SpeechActivity(speaking=True))
            first = cam.frames(wait_s=1.0)
            assert not first or time.monotonic() - said_at < 1.0
        assert first, "the first frame of the utterance was not sent"
        start, end = cam.speak_for_scene_seconds(30)
        time.sleep(0.5)  # anything late would show here
        frames = first + cam.frames()
        read_during_speech = end.counters["frames_read"] - start.counters["frames_read"]
        assert read_during_speech >= 30 * FPS
        assert len(frames) == 1, f"{len(frames)} frames for a static scene over {read_during_speech} frames of speech"
        frame = frames[0]
        assert_valid_jpeg(frame, 150, 16 / 9)
        assert end.counters["frames_published"] == start.counters["frames_published"]
        published = end.counters["frames_published"]  # ours, and any sent before we had joined
        assert end.counters["image_tokens_estimate"] == published * tokens(frame.width, frame.height)
        assert end.counters["pixels_published"] == published * frame.width * frame.height
        assert end.counters["frames_unchanged"] >= 50, "the scene was never compared"


def test_a_changing_scene_sends_at_most_2_frames_per_second(rundir: Path, sd: NotifySocket) -> None:
    video = moving_video(rundir / "moving.avi")
    with camera(rundir, sd, file_config(video, max_tokens=80)) as cam:
        cam.speak_for_scene_seconds(30)
        frames = cam.frames(wait_s=0.5)
        time.sleep(0.5)  # 5 s of the scene after speech stopped: nothing may follow
        assert not cam.frames(), "a frame was sent after speech stopped"
    times = [f.t for f in frames]
    gaps = [(b - a) / S for a, b in pairwise(times)]
    span = (times[-1] - times[0]) / S
    assert span >= 29, f"frames cover {span:.1f} s of the scene"
    assert min(gaps) >= 0.5 - 1e-6, f"two frames {min(gaps):.3f} s apart: above 2 per second"
    assert len(frames) >= 0.9 * (span * 2 + 1), f"{len(frames)} frames over {span:.1f} s of a changing scene"
    for frame in frames:
        assert_valid_jpeg(frame, 80, 16 / 9)


def test_no_frame_is_sent_during_silence(rundir: Path, sd: NotifySocket) -> None:
    still = rundir / "still.png"
    Image.fromarray(scene(1280, 720, np.random.default_rng(9))).save(still)
    with camera(rundir, sd, file_config(still)) as cam:
        quiet = cam.heartbeat(lambda hb: hb.counters["frames_read"] >= 20 * FPS, "20 s of the scene read")
        assert "waiting for speech" in quiet.status
        assert quiet.counters["frames_published"] == 0 and not cam.frames()
        assert cam.proc.poll() is None

        # Sampling without speech is a choice the config makes, applied without a restart.
        cam.reload(file_config(still, when="always"))
        beat = cam.heartbeat(lambda hb: "sampling always" in hb.status, "sampling always")
        frames = cam.frames(wait_s=2)
        assert len(frames) == 1, "always on: the first frame, then nothing while the scene stays still"
        assert beat.state == "running"


def test_a_missing_or_vanished_camera_is_reported_and_retried(rundir: Path, sd: NotifySocket) -> None:
    missing = "/dev/video97"
    assert not Path(missing).exists()
    with camera(rundir, sd, f'[camera]\nsource = "v4l2:{missing}"\n') as cam:
        ready = next(m for m in sd.messages if "READY=1" in m)
        assert f"{missing} does not exist" in ready
        beat = cam.heartbeat(lambda hb: hb.counters["camera_failures"] >= 2, "a second attempt")
        assert beat.state == "degraded" and "retrying" in beat.status
        # Waiting for a camera is this process's work: the watchdog is still petted.
        sd.messages.clear()
        wait_until(lambda: any("WATCHDOG=1" in m for m in sd.messages), 3, what="WATCHDOG=1")

        # Another camera in the config: picked up without a restart.
        folder = static_folder(rundir / "scene", count=2)
        cam.reload(file_config(folder))
        cam.heartbeat(lambda hb: hb.state == "running", "state running")
        cam.speak(True)
        assert cam.frames(wait_s=2), "no frame from the new camera"
        cam.speak(False)

        # The camera vanishes: reported, retried, and back when it returns.
        away = rundir / "unplugged"
        folder.rename(away)
        gone = cam.heartbeat(lambda hb: hb.state == "degraded", "state degraded")
        assert str(folder) in gone.status and ("is gone" in gone.status or "does not exist" in gone.status)
        assert cam.proc.poll() is None
        away.rename(folder)
        cam.heartbeat(lambda hb: hb.state == "running", "state running again", timeout=15)
        cam.speak(True)
        assert cam.frames(wait_s=2), "no frame after the camera came back"
    log = (rundir / "camera.log").read_text()
    assert log.count(f"{missing} does not exist") <= 3, "a missing camera is logged once, not at every retry"


# --- picamera2 and the camera listing --------------------------------------------------------


def tolk_devices(env: dict[str, str]) -> str:
    """The camera section of ``tolk devices``."""
    result = subprocess.run(tolk_cmd("devices"), env=env, capture_output=True, text=True, timeout=30, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "\ncamera:\n" in result.stdout, result.stdout
    return result.stdout.split("\ncamera:\n", 1)[1]


def test_picamera2_off_a_pi_is_reported_with_its_reason(rundir: Path, sd: NotifySocket) -> None:
    # As this machine is: picamera2 absent, or present without libcamera. Either way it says why.
    listing = tolk_devices(service_env(rundir))
    assert "picamera2" in listing and "not usable" in listing
    assert "file:/path" in listing
    assert "picamera2 is not installed" in listing or "No module named 'libcamera'" in listing

    # As picamera2 0.3 is when installed from PyPI off a Pi: its first line is `import libcamera`,
    # which only Raspberry Pi OS provides. A package that does just that stands in for it here.
    lib = rundir / "pylib" / "picamera2"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("import libcamera  # noqa: F401\n")
    env = {"PYTHONPATH": str(lib.parent)}
    listing = tolk_devices(service_env(rundir, **env))
    assert "No module named 'libcamera'" in listing
    with camera(rundir, sd, '[camera]\nsource = "picamera2"\n', **env) as cam:
        beat = cam.heartbeat(lambda hb: hb.state == "degraded", "state degraded")
        assert "No module named 'libcamera'" in beat.status and "retrying" in beat.status
        assert cam.proc.poll() is None


def _mapped_libraries(pid: int) -> set[str]:
    return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if ".so" in line}


def test_a_box_without_a_camera_keeps_the_camera_process_light(rundir: Path, sd: NotifySocket) -> None:
    # No imaging library in the process until a source is set: numpy's, Pillow's, OpenCV's.
    heavy = ("numpy", "PIL", "cv2", "openblas")
    with camera(rundir, sd, '[camera]\nsource = "none"\n') as cam:
        loaded = [lib for lib in _mapped_libraries(cam.proc.pid) if any(h in lib for h in heavy)]
        assert not loaded, loaded
        static = static_folder(rundir / "frames")
        cam.config.write_text(file_config(static))
        cam.proc.send_signal(signal.SIGHUP)  # a config reload: the camera opens, its libraries load
        wait_until(lambda: any("PIL" in lib for lib in _mapped_libraries(cam.proc.pid)), 15, what="Pillow loaded")
