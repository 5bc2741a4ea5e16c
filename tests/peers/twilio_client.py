#!/usr/bin/env python3
"""Plays Twilio's side of a Media Streams call against a bot, for testing.

This stands in for the switch (or for Twilio itself) when checking
tests/peers/pipecat_bot.py on its own:

* connects as a WebSocket client and sends "connected" and "start"
  (audio/x-mulaw, 8000 Hz, mono; customParameters {"lang": "pt"}),
* sends a sine (--tone, default 440 Hz) as 20 ms mu-law "media" messages
  for --seconds, in real time,
* plays the bot's audio into a simulated playout buffer, the way Twilio
  does: a bot's "mark" is echoed back when the audio queued before it has
  played, and a "clear" empties the buffer and echoes pending marks at once,
* sends one "dtmf" digit, then "stop", then closes.

It prints one JSON object on stdout: what it heard from the bot (dominant
frequency and RMS of the played audio), the marks and clears received, how
much audio was buffered when a clear arrived, and the close code.

Needs only the standard library, numpy and `websockets`, all present in the
bot's virtualenv:

    /opt/waswitch-pipecat/bin/python tests/peers/twilio_client.py --url ws://127.0.0.1:P/
"""

import argparse
import asyncio
import base64
import json
import math
import sys
import time
import uuid

import numpy as np
import websockets

RATE = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz, what Twilio sends per media message
FRAME_SECS = FRAME_SAMPLES / RATE


def unix_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------- G.711 mu-law
# Written out here (rather than using audioop, which is gone in Python 3.13)
# so the client has no codec dependency.

_BIAS = 0x84
_CLIP = 32635


def _linear_to_ulaw(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), _CLIP) + _BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _ulaw_to_linear(byte: int) -> int:
    byte = ~byte & 0xFF
    sign = byte & 0x80
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return -magnitude if sign else magnitude


_DECODE = np.array([_ulaw_to_linear(b) for b in range(256)], dtype=np.int16)
_ENCODE = np.array([_linear_to_ulaw(s) for s in range(-32768, 32768)], dtype=np.uint8)


def ulaw_encode(pcm: np.ndarray) -> bytes:
    return _ENCODE[pcm.astype(np.int32) + 32768].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    return _DECODE[np.frombuffer(data, dtype=np.uint8)]


# ---------------------------------------------------------------- analysis


# The bot's own analysis (the same measure both ways).
from pipecat_bot import dominant_frequency, rms  # noqa: E402


# ---------------------------------------------------------------- the call


class PlayoutBuffer:
    """Twilio's view of the bot's audio: a queue played out in real time.

    Each queued item is either audio (samples) or a mark name.  A mark is
    echoed back when everything queued before it has been played.
    """

    def __init__(self):
        self.queue = []  # [("audio", np.ndarray) | ("mark", name)]
        self.played = []  # audio actually played, in order

    def queued_seconds(self) -> float:
        return sum(len(x) for kind, x in self.queue if kind == "audio") / RATE

    def play(self, samples_due: int):
        """Play up to `samples_due` samples; return the marks that became due."""
        due_marks = []
        while self.queue:
            kind, item = self.queue[0]
            if kind == "mark":
                due_marks.append(item)
                self.queue.pop(0)
                continue
            if samples_due <= 0:
                break
            take = min(samples_due, len(item))
            self.played.append(item[:take])
            samples_due -= take
            if take == len(item):
                self.queue.pop(0)
            else:
                self.queue[0] = ("audio", item[take:])
        return due_marks

    def clear(self):
        """Drop queued audio; return the marks that were waiting."""
        marks = [item for kind, item in self.queue if kind == "mark"]
        self.queue = []
        return marks


class TwilioCall:
    def __init__(self, args):
        self.args = args
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.call_sid = "CA" + uuid.uuid4().hex
        self.account_sid = "AC" + uuid.uuid4().hex
        self.seq = 0
        self.closing = False  # set when we start the close handshake
        self.buffer = PlayoutBuffer()
        self.result = {
            "stream_sid": self.stream_sid,
            "call_sid": self.call_sid,
            "media_sent": 0,
            "media_received": 0,
            "media_bad_stream_sid": 0,
            "marks_received": [],
            "marks_echoed": [],
            "clears_received_unix_ms": [],
            "buffered_at_clear_s": [],
            "bot_hz": None,
            "bot_rms": None,
            "played_s": 0.0,
            "close_code": None,
            "closed_by": None,
            "errors": [],
        }

    def next_seq(self) -> str:
        self.seq += 1
        return str(self.seq)

    async def send(self, ws, message: dict):
        await ws.send(json.dumps(message))

    async def echo_marks(self, ws, names):
        for name in names:
            self.result["marks_echoed"].append(name)
            await self.send(ws, {
                "event": "mark",
                "sequenceNumber": self.next_seq(),
                "streamSid": self.stream_sid,
                "mark": {"name": name},
            })

    async def send_caller_audio(self, ws):
        """connected, start, media for --seconds, dtmf, stop."""
        await self.send(ws, {"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send(ws, {
            "event": "start",
            "sequenceNumber": self.next_seq(),
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "customParameters": {"lang": "pt"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": self.stream_sid,
        })
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        frames = int(round(self.args.seconds / FRAME_SECS))
        amplitude = 0.3 * 32767
        for i in range(frames):
            n = i * FRAME_SAMPLES + np.arange(FRAME_SAMPLES)
            pcm = (amplitude * np.sin(2 * math.pi * self.args.tone * n / RATE)).astype(np.int16)
            await self.send(ws, {
                "event": "media",
                "sequenceNumber": self.next_seq(),
                "media": {
                    "track": "inbound",
                    "chunk": str(i + 1),
                    "timestamp": str(int(i * FRAME_SECS * 1000)),
                    "payload": base64.b64encode(ulaw_encode(pcm)).decode(),
                },
                "streamSid": self.stream_sid,
            })
            self.result["media_sent"] += 1
            await asyncio.sleep(max(0.0, t0 + (i + 1) * FRAME_SECS - loop.time()))
        if self.args.dtmf:
            await self.send(ws, {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": self.next_seq(),
                "dtmf": {"track": "inbound_track", "digit": self.args.dtmf},
            })
        # Let the bot's replies (marks, late audio) arrive before hanging up.
        await asyncio.sleep(self.args.linger)
        await self.send(ws, {
            "event": "stop",
            "sequenceNumber": self.next_seq(),
            "streamSid": self.stream_sid,
            "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
        })
        await asyncio.sleep(0.2)
        self.closing = True
        await ws.close()

    async def play_out(self, ws):
        """Drain the playout buffer in real time and echo marks as they come due."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            due = int((now - last) * RATE)
            last += due / RATE
            await self.echo_marks(ws, self.buffer.play(due))

    async def receive(self, ws):
        async for raw in ws:
            message = json.loads(raw)
            event = message.get("event")
            if message.get("streamSid") != self.stream_sid and event in ("media", "mark", "clear"):
                self.result["media_bad_stream_sid"] += 1
            if event == "media":
                self.result["media_received"] += 1
                samples = ulaw_decode(base64.b64decode(message["media"]["payload"]))
                self.buffer.queue.append(("audio", samples))
            elif event == "mark":
                name = message["mark"]["name"]
                self.result["marks_received"].append(name)
                self.buffer.queue.append(("mark", name))
            elif event == "clear":
                self.result["clears_received_unix_ms"].append(unix_ms())
                self.result["buffered_at_clear_s"].append(round(self.buffer.queued_seconds(), 3))
                await self.echo_marks(ws, self.buffer.clear())
            else:
                self.result["errors"].append(f"unexpected event {event!r}")

    async def run(self):
        async with websockets.connect(self.args.url, open_timeout=5, close_timeout=2) as ws:
            tasks = [
                asyncio.create_task(self.send_caller_audio(ws)),
                asyncio.create_task(self.play_out(ws)),
                asyncio.create_task(self.receive(ws)),
            ]
            sender, player, receiver = tasks
            try:
                # The call ends when we have sent stop and closed, or when the
                # bot closes first (the receive loop ends).
                await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
                await asyncio.wait_for(ws.wait_closed(), timeout=3)
                self.result["closed_by"] = "client" if self.closing else "bot"
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            self.result["close_code"] = ws.close_code
        self.summarise()

    def summarise(self):
        if self.buffer.played:
            played = np.concatenate(self.buffer.played)
            self.result["played_s"] = round(len(played) / RATE, 3)
            # Measure over the non-silent 20 ms blocks only.
            blocks = [b for b in np.array_split(played, max(1, len(played) // FRAME_SAMPLES))
                      if rms(b) >= 50]
            if blocks:
                voiced = np.concatenate(blocks)
                self.result["bot_rms"] = round(rms(voiced), 1)
                self.result["bot_hz"] = round(dominant_frequency(voiced, RATE), 1)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="bot URL, e.g. ws://127.0.0.1:8765/stream")
    p.add_argument("--tone", type=float, default=440.0, help="caller tone, Hz")
    p.add_argument("--seconds", type=float, default=4.0, help="how long the caller talks")
    p.add_argument("--dtmf", default="5", help="digit sent after the audio ('' for none)")
    p.add_argument("--linger", type=float, default=0.5,
                   help="seconds between the dtmf and stop")
    p.add_argument("--timeout", type=float, default=20.0, help="hard limit for the whole call")
    return p.parse_args()


async def amain(args):
    call = TwilioCall(args)
    try:
        await asyncio.wait_for(call.run(), timeout=args.timeout)
    except (TimeoutError, asyncio.TimeoutError):
        call.result["errors"].append("timeout")
        call.summarise()
    except (OSError, websockets.exceptions.WebSocketException) as e:
        call.result["errors"].append(repr(e))
        call.summarise()
    print(json.dumps(call.result, indent=2, sort_keys=True))
    return 0 if not call.result["errors"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(amain(parse_args())))
