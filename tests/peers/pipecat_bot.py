#!/usr/bin/env python3
"""A Pipecat voice bot that speaks Twilio Media Streams, used as a test peer.

The switch connects to this bot as a WebSocket client, exactly as Twilio
would, and the bot answers with a real Pipecat pipeline (no AI services):

    transport.input() -> CallerAudioMeter -> ToneBot -> transport.output()

* FastAPIWebsocketTransport + TwilioFrameSerializer carry the call, with
  the serializer's REST hang-up turned off (there is no Twilio here).
* CallerAudioMeter measures what the caller sends (dominant frequency over
  a 1 s window, RMS) and collects DTMF digits.
* ToneBot plays a sine at --tone Hz in real time.  With --clear-at it
  floods the switch with --burst seconds of tone, sends a mark
  "after-burst", interrupts the pipeline (which the serializer turns into
  a Twilio "clear") and is silent afterwards.  With --hangup-at it ends
  the pipeline, which closes the WebSocket normally (code 1000).

Everything observed goes into a JSON report (--report), rewritten
atomically every 200 ms and once more at the end.

Install (one pip command, into the venv this script is run with):

    python3 -m venv /opt/waswitch-pipecat
    /opt/waswitch-pipecat/bin/pip install 'pipecat-ai[websocket]==1.14.0' 'uvicorn==0.55.0'

Run:

    /opt/waswitch-pipecat/bin/python tests/peers/pipecat_bot.py \
        --port P --tone HZ --report FILE \
        [--clear-at SECONDS] [--burst SECONDS] [--hangup-at SECONDS]

The only thing printed on stdout is the line "ready", once the socket
listens on 127.0.0.1:P.  Logs go to stderr.
"""

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import sys
import tempfile
import time

import numpy as np
import uvicorn
from fastapi import FastAPI, WebSocket
from loguru import logger

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    EndWorkerFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    OutputAudioRawFrame,
    OutputTransportMessageUrgentFrame,
    StartFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner

# Twilio Media Streams carry 8 kHz mono mu-law.  Pipecat's Twilio examples run
# the pipeline itself at 8 kHz too; the serializer converts mu-law <-> 16-bit
# PCM (and would resample if the pipeline rates were different).
PIPELINE_RATE = 8000

# The tone generator pushes audio in 20 ms frames (the output transport then
# regroups it into its own chunks, 40 ms by default).
FRAME_SECS = 0.020

# Peak amplitude of the generated sine, as a fraction of int16 full scale.
TONE_AMPLITUDE = 0.3

# Below this RMS (int16 units) a window counts as silence: it is not used to
# update heard_hz, so trailing silence does not erase a good measurement.
SILENCE_RMS = 50.0

# How long a call may stay open after the switch sent "stop" without closing
# the socket itself, before the bot ends the call on its own.
STOP_GRACE_SECS = 2.0


def unix_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


class Report:
    """What the bot saw and did, written to disk as JSON."""

    def __init__(self, path: str, tone_hz: float):
        self.path = path
        self.data = {
            # From Twilio's "start" message.
            "stream_sid": None,
            "call_sid": None,
            "custom_parameters": {},
            "media_format": None,
            # What the caller sent us.
            "heard_hz": None,
            "heard_rms": None,
            "media_in": 0,
            "dtmf": [],
            "marks_back": [],
            "stop_received": False,
            # What we did.
            "tone_hz": tone_hz,
            "media_out": 0,
            "media_out_after_clear": 0,
            "burst_messages": 0,
            "burst_started_unix_ms": None,
            "burst_done_unix_ms": None,
            "mark_sent_unix_ms": None,
            "clear_sent_unix_ms": None,
            "after_burst_mark_back_unix_ms": None,
            "hangup_unix_ms": None,
            # Lifecycle.
            "connected_unix_ms": None,
            "start_unix_ms": None,
            "closed": False,
            "closed_unix_ms": None,
        }

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value):
        self.data[key] = value

    def write(self):
        """Replace the report file atomically (temp file + rename)."""
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".pipecat-report-", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.data, f, indent=2, sort_keys=True)
                f.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


async def write_report_periodically(report: Report):
    while True:
        await asyncio.sleep(0.2)
        try:
            report.write()
        except OSError as e:
            logger.warning(f"could not write report: {e}")


# --------------------------------------------------------------------------
# Serializer that also tells us about the Twilio events Pipecat ignores
# --------------------------------------------------------------------------


class ObservingTwilioSerializer(TwilioFrameSerializer):
    """TwilioFrameSerializer that records every inbound Twilio event.

    Pipecat's serializer turns "media" into InputAudioRawFrame and "dtmf"
    into InputDTMFFrame, and drops everything else ("mark", "stop", ...).
    We still let it do all the decoding; we only take note of the events on
    the way through so the report can show them.
    """

    def __init__(self, report: Report, on_stop, **kwargs):
        super().__init__(**kwargs)
        self._report = report
        self._on_stop = on_stop

    async def deserialize(self, data):
        try:
            message = json.loads(data)
        except (TypeError, ValueError):
            message = {}
        event = message.get("event") if isinstance(message, dict) else None
        if event == "media":
            self._report["media_in"] += 1
        elif event == "mark":
            name = (message.get("mark") or {}).get("name")
            self._report["marks_back"].append(name)
            if name == "after-burst" and self._report["after_burst_mark_back_unix_ms"] is None:
                self._report["after_burst_mark_back_unix_ms"] = unix_ms()
        elif event == "stop":
            self._report["stop_received"] = True
            self._on_stop()
        return await super().deserialize(data)


def tap_outgoing(websocket: WebSocket, report: Report):
    """Wrap websocket.send_text so the report learns what actually went out.

    Pipecat's FastAPI transport sends every serialized frame through
    send_text; so does our burst.  Recording after the send returns gives
    the moment a "clear" really left the bot.
    """
    original = websocket.send_text

    async def send_text(data: str):
        await original(data)
        try:
            event = json.loads(data).get("event")
        except (TypeError, ValueError, AttributeError):
            return
        if event == "media":
            report["media_out"] += 1
            if report["clear_sent_unix_ms"] is not None:
                report["media_out_after_clear"] += 1
        elif event == "clear" and report["clear_sent_unix_ms"] is None:
            report["clear_sent_unix_ms"] = unix_ms()
        elif event == "mark" and report["mark_sent_unix_ms"] is None:
            report["mark_sent_unix_ms"] = unix_ms()

    websocket.send_text = send_text


# --------------------------------------------------------------------------
# Audio helpers
# --------------------------------------------------------------------------


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """Strongest frequency in `samples` (Hann window, FFT, parabolic peak fit)."""
    x = samples.astype(np.float64)
    x -= x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1.0 / rate)
    # Ignore DC and the lowest bins (hum, offsets).
    low = int(np.searchsorted(freqs, 40.0))
    k = low + int(np.argmax(spectrum[low:]))
    if 0 < k < len(spectrum) - 1:
        # Fit a parabola through the peak and its neighbours (log magnitude)
        # to land between FFT bins.
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if denom != 0 else 0.0
    else:
        shift = 0.0
    return float((k + shift) * rate / len(x))


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0


class SineSource:
    """Phase-continuous 16-bit sine, handed out in pieces."""

    def __init__(self, hz: float, rate: int):
        self._hz = hz
        self._rate = rate
        self._n = 0  # index of the next sample

    def take(self, count: int) -> bytes:
        t = (self._n + np.arange(count)) / self._rate
        self._n += count
        wave = TONE_AMPLITUDE * 32767.0 * np.sin(2 * math.pi * self._hz * t)
        return wave.astype("<i2").tobytes()


# --------------------------------------------------------------------------
# Frame processors
# --------------------------------------------------------------------------


class CallerAudioMeter(FrameProcessor):
    """Measures the caller's audio and records DTMF; consumes input audio.

    Every 0.5 s of new audio it analyses the latest 1 s: RMS, and the
    dominant frequency when the window is not silent.
    """

    def __init__(self, report: Report):
        super().__init__()
        self._report = report
        self._buffer = np.zeros(0, dtype=np.int16)
        self._since_analysis = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)

        if isinstance(frame, InputAudioRawFrame):
            # The caller's audio ends here; nothing downstream needs it.
            self._add_audio(frame)
            return
        if isinstance(frame, InputDTMFFrame):
            self._report["dtmf"].append(frame.button.value)
        await self.push_frame(frame, direction)

    def _add_audio(self, frame: InputAudioRawFrame):
        rate = frame.sample_rate
        samples = np.frombuffer(frame.audio, dtype="<i2")
        if frame.num_channels > 1:
            samples = samples[:: frame.num_channels]
        # Keep the last second only.
        self._buffer = np.concatenate([self._buffer, samples])[-rate:]
        self._since_analysis += len(samples)
        if len(self._buffer) >= rate and self._since_analysis >= rate // 2:
            self._since_analysis = 0
            level = rms(self._buffer)
            self._report["heard_rms"] = round(level, 1)
            if level >= SILENCE_RMS:
                self._report["heard_hz"] = round(dominant_frequency(self._buffer, rate), 1)


class ToneBot(FrameProcessor):
    """The bot's "voice": a sine at a fixed frequency, in real time.

    Runs one task that pushes a 20 ms OutputAudioRawFrame every 20 ms, on
    an absolute schedule so it does not drift.  All timed actions (burst +
    clear, hang-up) are taken by that same task, so they never race with
    the tone.
    """

    def __init__(self, args, report: Report, serializer: TwilioFrameSerializer,
                 websocket: WebSocket, stream_sid: str, t0: float):
        super().__init__()
        self._args = args
        self._report = report
        self._serializer = serializer
        self._websocket = websocket
        self._stream_sid = stream_sid
        self._t0 = t0  # loop.time() when "start" arrived; timings count from here
        self._task = None
        self._rate = PIPELINE_RATE
        self._sine = None
        self._silent = False

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)

        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            # Generate at the pipeline's output rate (PipelineParams).
            self._rate = self.processor_setup.audio_out_sample_rate
            self._sine = SineSource(self._args.tone, self._rate)
            self._task = self.create_task(self._speak(), name="tone")
            return
        if isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop_task()
        await self.push_frame(frame, direction)

    async def cleanup(self):
        await super().cleanup()
        await self._stop_task()

    async def _stop_task(self):
        if self._task:
            task, self._task = self._task, None
            if task is not asyncio.current_task():
                await self.cancel_task(task)

    def _due(self, at):
        return at is not None and asyncio.get_running_loop().time() >= self._t0 + at

    async def _speak(self):
        loop = asyncio.get_running_loop()
        per_frame = int(self._rate * FRAME_SECS)
        clear_done = False
        next_time = loop.time()
        while True:
            if not clear_done and self._due(self._args.clear_at):
                clear_done = True
                await self._burst_mark_and_clear()
                next_time = loop.time()
            if self._due(self._args.hangup_at):
                await self._hang_up()
                return
            if not self._silent:
                audio = self._sine.take(per_frame)
                await self.push_frame(OutputAudioRawFrame(audio, self._rate, 1))
            next_time += FRAME_SECS
            delay = next_time - loop.time()
            if delay < -0.5:
                # We were starved for a long time; don't try to catch up.
                next_time = loop.time()
                delay = 0
            await asyncio.sleep(max(delay, 0))

    async def _burst_mark_and_clear(self):
        burst = max(self._args.burst or 0.0, 0.0)
        if burst > 0:
            # Pipecat's output transport paces audio to real time (one 40 ms
            # chunk, then a 40 ms sleep), so audio pushed through it can never
            # build up a queue in the switch.  To put several seconds there at
            # once we bypass it: serialize 20 ms frames with the same
            # TwilioFrameSerializer and send them on the socket back to back.
            self._report["burst_started_unix_ms"] = unix_ms()
            per_frame = int(self._rate * FRAME_SECS)
            for _ in range(int(round(burst / FRAME_SECS))):
                frame = OutputAudioRawFrame(self._sine.take(per_frame), self._rate, 1)
                payload = await self._serializer.serialize(frame)
                if payload:
                    await self._websocket.send_text(payload)
                    self._report["burst_messages"] += 1
            self._report["burst_done_unix_ms"] = unix_ms()

        # A mark right after the burst: the switch should echo it once the
        # audio before it has played, or at once when a clear empties the
        # queue.  Sent as an urgent transport message, which the serializer
        # writes out verbatim as JSON.
        mark = {"event": "mark", "streamSid": self._stream_sid, "mark": {"name": "after-burst"}}
        await self.push_frame(OutputTransportMessageUrgentFrame(message=mark))

        # Barge-in the Pipecat way: an InterruptionFrame.  The output transport
        # drops what it still had queued and the TwilioFrameSerializer turns
        # the frame into {"event": "clear", "streamSid": ...}.
        self._silent = True
        await self.broadcast_interruption()

    async def _hang_up(self):
        self._silent = True
        self._report["hangup_unix_ms"] = unix_ms()
        # Ends the pipeline gracefully; the output transport then closes the
        # WebSocket (normal closure, code 1000).
        await self.push_frame(EndWorkerFrame(reason="hangup-at"))


# --------------------------------------------------------------------------
# The WebSocket server
# --------------------------------------------------------------------------


class QuietServer(uvicorn.Server):
    """uvicorn.Server that leaves signal handling to us.

    Stock uvicorn re-raises a captured SIGTERM after shutting down, which
    would kill the process before the final report is written.
    """

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class Bot:
    def __init__(self, args):
        self.args = args
        self.report = Report(args.report, args.tone)
        self.server = None
        self.worker = None
        self.busy = False
        self.app = FastAPI()
        # Any path: Twilio's <Stream url> can point anywhere.
        self.app.add_api_websocket_route("/{path:path}", self.handle)

    async def read_start(self, websocket: WebSocket) -> dict:
        """Read Twilio's "connected" and "start" messages.

        Like Pipecat's telephony examples, the bot reads these itself before
        building the transport: "start" carries the streamSid the serializer
        must stamp on every outgoing message, and the customParameters.
        """
        for _ in range(10):
            message = json.loads(await asyncio.wait_for(websocket.receive_text(), timeout=10))
            event = message.get("event")
            if event == "connected":
                self.report["connected_unix_ms"] = unix_ms()
            elif event == "start":
                return message
            else:
                logger.warning(f"unexpected {event!r} before start; ignored")
        raise RuntimeError("no start message")

    async def handle(self, websocket: WebSocket, path: str = ""):
        if self.busy:
            # One call per bot process.  Closing before accept() refuses the
            # WebSocket handshake (the caller gets HTTP 403).
            await websocket.close()
            return
        self.busy = True
        await websocket.accept()
        loop = asyncio.get_running_loop()
        try:
            message = await self.read_start(websocket)
            t0 = loop.time()
            start = message.get("start") or {}
            stream_sid = start.get("streamSid") or message.get("streamSid")
            self.report["start_unix_ms"] = unix_ms()
            self.report["stream_sid"] = stream_sid
            self.report["call_sid"] = start.get("callSid")
            self.report["custom_parameters"] = start.get("customParameters") or {}
            self.report["media_format"] = start.get("mediaFormat")
            await self.run_call(websocket, stream_sid, start.get("callSid"), t0)
        except Exception as e:
            logger.error(f"call failed: {e!r}")
            with contextlib.suppress(Exception):
                await websocket.close()
        finally:
            self.report["closed"] = True
            self.report["closed_unix_ms"] = unix_ms()
            self.report.write()
            # One call per process: stop serving once it is over.
            if self.server:
                self.server.should_exit = True

    async def run_call(self, websocket: WebSocket, stream_sid: str, call_sid, t0: float):
        loop = asyncio.get_running_loop()

        def on_stop():
            # Twilio closes the socket right after "stop"; if the peer does
            # not, end the call ourselves a little later.
            async def end_if_still_open():
                await asyncio.sleep(STOP_GRACE_SECS)
                if self.worker:
                    await self.worker.cancel(reason="stop without close")

            loop.create_task(end_if_still_open())

        serializer = ObservingTwilioSerializer(
            self.report,
            on_stop,
            stream_sid=stream_sid,
            call_sid=call_sid,
            # No Twilio REST API here: never try to hang up through it.
            params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
        )
        tap_outgoing(websocket, self.report)

        transport = FastAPIWebsocketTransport(
            websocket=websocket,
            params=FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                add_wav_header=False,
                serializer=serializer,
                # Close promptly on hang-up instead of padding with silence.
                audio_out_end_silence_secs=0,
            ),
        )

        pipeline = Pipeline(
            [
                transport.input(),
                CallerAudioMeter(self.report),
                ToneBot(self.args, self.report, serializer, websocket, stream_sid, t0),
                transport.output(),
            ]
        )
        self.worker = PipelineWorker(
            pipeline,
            params=PipelineParams(
                audio_in_sample_rate=PIPELINE_RATE,
                audio_out_sample_rate=PIPELINE_RATE,
            ),
            enable_rtvi=False,
            idle_timeout_secs=None,
        )

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(transport, ws):
            await self.worker.cancel(reason="switch disconnected")

        runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
        await runner.add_workers(self.worker)
        await runner.run()

    def terminate(self):
        """SIGTERM / SIGINT / --max-seconds: end the call and the server.

        A call in progress is cancelled first, so its socket gets a normal
        close from Pipecat; the call's end then stops the server.  uvicorn
        is told to stop directly when there is no call, or as a fallback
        if the call has not ended within 2 s.
        """
        if not self.server:
            return
        loop = asyncio.get_running_loop()
        if self.worker and not self.report["closed"]:
            loop.create_task(self.worker.cancel(reason="terminated"))
            loop.call_later(2.0, setattr, self.server, "should_exit", True)
        else:
            self.server.should_exit = True

    async def main(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.terminate)
        loop.call_later(self.args.max_seconds, self.terminate)

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.args.port))
        sock.listen(16)

        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
        )
        self.server = QuietServer(config)

        self.report.write()
        writer = loop.create_task(write_report_periodically(self.report))

        async def announce_ready():
            while not self.server.started:
                await asyncio.sleep(0.01)
            print("ready", flush=True)

        announcer = loop.create_task(announce_ready())
        try:
            await self.server.serve(sockets=[sock])
        finally:
            for task in (writer, announcer):
                task.cancel()
            self.report.write()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    p.add_argument("--tone", type=float, required=True, help="frequency the bot speaks, Hz")
    p.add_argument("--report", required=True, help="JSON report file")
    p.add_argument("--clear-at", type=float, default=None,
                   help="seconds after start: burst, mark 'after-burst', then clear")
    p.add_argument("--burst", type=float, default=0.0,
                   help="seconds of tone sent as fast as possible before the clear")
    p.add_argument("--hangup-at", type=float, default=None,
                   help="seconds after start: close the WebSocket from the bot")
    p.add_argument("--max-seconds", type=float, default=300.0,
                   help="give up and exit after this long (safety net)")
    p.add_argument("--log-level", default="WARNING", help="loguru level for stderr")
    return p.parse_args()


def main():
    args = parse_args()
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    asyncio.run(Bot(args).main())


if __name__ == "__main__":
    main()
