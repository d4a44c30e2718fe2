"""Audio sources for streaming: a file played as a stream, or a microphone.

Each is a 16 kHz float32 stream with its own clock: a file in real or simulated time, a microphone through
sounddevice/PortAudio (resampled as it arrives)."""

from __future__ import annotations

import logging
import queue
import time
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from utils.audio import SAMPLE_RATE

logger = logging.getLogger(__name__)


class AudioDeviceError(RuntimeError):
    """No usable audio input: PortAudio missing, no input device, or the device cannot be opened."""


class AudioSource(Protocol):
    """A stream of 16 kHz float32 audio with its own clock (seconds since the stream started)."""

    def read(self, min_samples: int) -> np.ndarray | None:
        """Block until ``min_samples`` new samples (or the end) are there; return all available, None at the end."""

    def now(self) -> float:
        """Stream clock in seconds."""

    def spend(self, seconds: float) -> None:
        """The caller computed for ``seconds``; a simulated clock advances, a real one ignores this."""

    def drain(self) -> np.ndarray:
        """Without waiting: the audio that arrived and was not read yet (empty when none); after Ctrl-C."""


class FileSource:
    """A waveform played as a stream: in real time (wall clock) or as fast as possible (simulated clock).

    With ``realtime=False`` the clock is simulated: it advances by the compute time the caller reports
    and jumps forward when the caller waits for audio, so latency figures mean what they would in real
    time while the run takes only the compute time.
    """

    def __init__(self, audio: np.ndarray, *, realtime: bool = True) -> None:
        self.audio = np.asarray(audio, dtype=np.float32)
        self.realtime = realtime
        self.pos = 0
        self._t0: float | None = None
        self._sim_now = 0.0

    def now(self) -> float:
        if not self.realtime:
            return self._sim_now
        if self._t0 is None:
            self._t0 = time.perf_counter()
        return time.perf_counter() - self._t0

    def spend(self, seconds: float) -> None:
        if not self.realtime:
            self._sim_now += seconds

    def drain(self) -> np.ndarray:
        heard = min(len(self.audio), max(self.pos, int(self.now() * SAMPLE_RATE)))
        block = self.audio[self.pos: heard]
        self.pos = heard
        return block

    def read(self, min_samples: int) -> np.ndarray | None:
        if self.pos >= len(self.audio):
            return None
        target = min(self.pos + max(min_samples, 1), len(self.audio))
        if self.realtime:
            wait = target / SAMPLE_RATE - self.now()
            if wait > 0:
                time.sleep(wait)
            avail = min(len(self.audio), max(target, int(self.now() * SAMPLE_RATE)))
        else:
            avail = min(len(self.audio), max(target, int(self._sim_now * SAMPLE_RATE)))
            self._sim_now = max(self._sim_now, avail / SAMPLE_RATE)
        block = self.audio[self.pos: avail]
        self.pos = avail
        return block


def import_sounddevice() -> ModuleType:
    """The sounddevice module, or AudioDeviceError saying how to install PortAudio."""
    try:
        import sounddevice
    except OSError as e:  # sounddevice raises OSError at import when libportaudio is missing
        raise AudioDeviceError(
            f"PortAudio is not available ({e}). Install it (Debian/Ubuntu: apt-get install libportaudio2; "
            "macOS: brew install portaudio; conda: conda install -c conda-forge portaudio), or stream a "
            "file instead with --audio_path FILE") from e
    return sounddevice


def list_input_devices() -> list[dict[str, Any]]:
    """Input devices as dicts (index, name, channels, default_samplerate, is_default)."""
    sd = import_sounddevice()
    try:
        devices = sd.query_devices()
        default_in = sd.default.device[0]
    except sd.PortAudioError as e:
        raise AudioDeviceError(f"cannot query audio devices: {e}") from e
    return [{"index": i, "name": d["name"], "channels": d["max_input_channels"],
             "default_samplerate": d["default_samplerate"], "is_default": i == default_in}
            for i, d in enumerate(devices) if d["max_input_channels"] > 0]


def block_capture_time(arrival: float, block_s: float, current_time: float, adc_time: float) -> tuple[float, bool]:
    """When (on the ``arrival`` clock) the first sample of an input block was captured, and whether the
    device said so.

    PortAudio's ``inputBufferAdcTime`` gives the capture time of the block on the stream clock
    (``current_time`` = now on that clock); where the host API leaves it at 0, the block is taken to have
    ended when it arrived (an estimate: False).
    """
    if current_time > 0 and adc_time > 0:
        return arrival - max(current_time - adc_time, 0.0), True
    return arrival - block_s, False


class MicrophoneSource:
    """Audio from an input device through sounddevice, resampled to 16 kHz as it arrives.

    Use as a context manager; raises AudioDeviceError when there is no usable input device.
    """

    def __init__(self, device_index: int | None = None, samplerate: int | None = None,
                 block_s: float = 0.1) -> None:
        self._sd = import_sounddevice()
        try:
            inputs = list_input_devices()
            if not inputs:
                raise AudioDeviceError("no audio input device found (is a microphone connected? "
                                       "python realtime_transcribe.py --list_devices shows what PortAudio sees)")
            info = self._sd.query_devices(device_index, "input")
        except (ValueError, self._sd.PortAudioError) as e:
            raise AudioDeviceError(f"input device {device_index if device_index is not None else '(default)'}: "
                                   f"{e}; pick one from --list_devices") from e
        self.device_index = device_index
        self.samplerate = int(samplerate or info["default_samplerate"])
        self.device_name = info["name"]
        self._block = max(1, int(block_s * self.samplerate))
        self._queue: queue.Queue[np.ndarray] = queue.Queue()
        self._resampler = None
        if self.samplerate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(self.samplerate, SAMPLE_RATE, 1, dtype="float32")
        self._stream = None
        self._t0: float | None = None  # perf_counter time at which stream sample 0 was captured
        self._frames = 0  # frames received at the device rate
        self.lost_s = 0.0  # audio the device's capture times say was lost (s)
        self._pending = np.zeros(0, dtype=np.float32)

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status:
            logger.warning("audio input: %s", status)
        # The stream clock starts when the first sample was captured, not when the stream was opened (an
        # input can take a second or more to deliver its first block: ~1.1 s measured with PulseAudio).
        # Where the device gives capture times and they show audio lost before a block (a gap longer than
        # 50 ms; PulseAudio drops ~0.3 s when a new playback stream starts), the clock moves on with it, so
        # a word's capture time stays right after the gap.
        captured, exact = block_capture_time(time.perf_counter(), frames / self.samplerate,
                                             time_info.currentTime, time_info.inputBufferAdcTime)
        anchor = captured - self._frames / self.samplerate
        self._frames += frames
        if self._t0 is None:
            self._t0 = anchor
        elif exact and anchor > self._t0 + 0.05:
            logger.debug("audio input: capture times jumped %.3f s ahead of the samples", anchor - self._t0)
            self.lost_s += anchor - self._t0
            self._t0 = anchor
        self._queue.put(indata[:, 0].copy())

    def __enter__(self) -> MicrophoneSource:
        try:
            self._stream = self._sd.InputStream(device=self.device_index, samplerate=self.samplerate, channels=1,
                                                dtype="float32", blocksize=self._block, callback=self._callback)
            self._stream.start()
        except self._sd.PortAudioError as e:
            raise AudioDeviceError(f"cannot open input device {self.device_name!r} at {self.samplerate} Hz: {e}; "
                                   "try another --samplerate or --device_index") from e
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
        if self.lost_s >= 0.1:
            logger.warning("audio input: by the device's capture times, %.2f s of audio never arrived (dropped by "
                           "the audio server or an overloaded machine); latency was measured on its clock", self.lost_s)

    def now(self) -> float:
        """Seconds since the first sample was captured (0 before any audio arrived)."""
        return 0.0 if self._t0 is None else time.perf_counter() - self._t0

    def spend(self, seconds: float) -> None:
        pass

    def _to_16k(self, block: np.ndarray) -> np.ndarray:
        if self._resampler is None:
            return block
        return self._resampler.resample_chunk(block)

    def drain(self) -> np.ndarray:
        parts = [self._pending]
        while True:
            try:
                parts.append(self._to_16k(self._queue.get_nowait()))
            except queue.Empty:
                break
        self._pending = np.zeros(0, dtype=np.float32)
        return np.concatenate(parts)

    def read(self, min_samples: int) -> np.ndarray | None:
        have = len(self._pending)
        while have < min_samples:
            try:
                block = self._to_16k(self._queue.get(timeout=0.2))
            except queue.Empty:
                if self._stream is None or not self._stream.active:
                    raise AudioDeviceError(f"input device {self.device_name!r} stopped delivering audio") from None
                continue
            self._pending = np.concatenate([self._pending, block])
            have += len(block)
        return self.drain()  # and whatever else already arrived
