"""Plausible e-health telemetry: seeded, reproducible and cheap enough for tens of thousands of devices.

Topic scheme (``topic()``)::

    fleet/<site>/<model>/<device-id>/<kind>      kind = "telemetry" | "alarm"

e.g. ``fleet/ward-a/pulse-oximeter/dev-000042/alarm``. A subscriber watches a whole site with
``fleet/ward-a/#`` or every alarm with ``fleet/+/+/+/alarm``. Alarms are published at the scenario's
``qos_alarm`` (higher), telemetry at ``qos_telemetry``.

Payload (JSON, UTF-8)::

    {"id": "dev-000042", "model": "pulse-oximeter", "seq": 7, "t": 35.012, "ts_ns": 1796380000123456789,
     "values": {"spo2": 96, "pulse": 81, "pi": 3.2}, "unit": {"spo2": "%", "pulse": "bpm", "pi": "%"}}

``t`` is seconds since the run started, ``seq`` counts the device's messages from 0 and ``ts_ns`` is the wall
clock (``time.time_ns()``) when the device published it: ``id``, ``seq`` and ``ts_ns`` make every message
traceable, so that a subscriber's copy says which publish it is and how long it took (:func:`trace` reads them
back, cheaply). The wall clock is the one every process on one machine shares; across machines each worker's
skew must be measured and corrected. ``pad_to`` pads a message to at least that many bytes (a ``"pad"`` field
last), for a payload size of the scenario's choosing. An alarm message has
the same fields plus ``"alarm": {"codes": [...], "active": [...]}``; it is sent instead of the sample at which
a condition starts (edge-triggered, so a device in a long episode does not flood the broker).

Physiology: each device draws its own baselines from a population, then every channel follows an AR(1)
process around its baseline; rare episodes (tachycardia, desaturation, fever, hypo/hyperglycaemia,
hypertension, occlusion) shift the mean for a while, which is what crosses the alarm thresholds. Each
message's noise comes from a counter-based generator (Philox) keyed by (seed, device) and counted by the
message's seq, built on demand: a message costs some tens of microseconds, a device well under 1 KB.

Cadences keep total rates sane: 5,000 mixed devices publish a few hundred messages per second.
"""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

INF = math.inf


@dataclass(frozen=True)
class Channel:
    """One measured quantity: population baseline, within-device variation and alarm limits."""

    name: str
    unit: str
    mean: float  # population mean of the per-device baseline
    spread: float  # population s.d. of the baseline
    sd: float  # stationary s.d. around the baseline within a device
    phi: float  # AR(1) coefficient per sample: closer to 1 = slower drift
    low: float  # physical clip range
    high: float
    decimals: int = 0
    alarm_low: float = -INF  # alarm when value < alarm_low
    alarm_high: float = INF  # alarm when value > alarm_high


@dataclass(frozen=True)
class Episode:
    """A clinical episode: shifts channel means for ``length`` samples, starting with ``onset`` per sample."""

    name: str
    shift: dict[str, float]
    onset: float
    length: int


@dataclass(frozen=True)
class DeviceModel:
    """What one kind of device measures, how often it publishes, and when it alarms."""

    name: str
    interval: float  # seconds between publishes
    payload_bytes: int  # typical JSON payload size, measured
    channels: tuple[Channel, ...]
    episodes: tuple[Episode, ...] = ()
    description: str = ""

    @property
    def unit(self) -> dict[str, str]:
        return {c.name: c.unit for c in self.channels}

    @property
    def thresholds(self) -> dict[str, tuple[float, float]]:
        """channel -> (alarm below, alarm above); +-inf where there is no limit."""
        return {
            c.name: (c.alarm_low, c.alarm_high)
            for c in self.channels
            if (c.alarm_low, c.alarm_high) != (-INF, INF)
        }


def _hr(name: str = "hr") -> Channel:
    return Channel(name, "bpm", 76, 9, 5, 0.9, 25, 220, 0, alarm_low=45, alarm_high=120)


_TACHY = Episode("tachycardia", {"hr": 55}, 0.003, 12)
MODELS: dict[str, DeviceModel] = {
    m.name: m
    for m in (
        DeviceModel(
            "heart-rate-monitor",
            5.0,
            150,
            (_hr(), Channel("rr", "ms", 790, 60, 30, 0.8, 270, 2400)),
            (_TACHY, Episode("bradycardia", {"hr": -35}, 0.001, 12)),
            "Chest-strap heart-rate monitor: heart rate and R-R interval.",
        ),
        DeviceModel(
            "pulse-oximeter",
            5.0,
            170,
            (
                Channel("spo2", "%", 97, 1.2, 1.0, 0.85, 60, 100, 0, alarm_low=90),
                _hr("pulse"),
                Channel("pi", "%", 3.5, 1.5, 0.4, 0.8, 0.2, 20, 1),
            ),
            (
                Episode("desaturation", {"spo2": -9}, 0.003, 12),
                Episode("tachycardia", {"pulse": 55}, 0.002, 12),
            ),
            "Finger pulse oximeter: SpO2, pulse rate and perfusion index.",
        ),
        DeviceModel(
            "glucose-monitor",
            60.0,
            190,
            (Channel("glucose", "mg/dL", 125, 25, 18, 0.95, 40, 400, 0, alarm_low=70, alarm_high=250),),
            (
                Episode("hypoglycaemia", {"glucose": -70}, 0.01, 20),
                Episode("hyperglycaemia", {"glucose": 150}, 0.01, 30),
            ),
            "Continuous glucose monitor: interstitial glucose and its trend.",
        ),
        DeviceModel(
            "bp-cuff",
            300.0,
            190,
            (
                Channel("sys", "mmHg", 124, 11, 8, 0.6, 60, 260, 0, alarm_low=90, alarm_high=180),
                Channel("dia", "mmHg", 79, 8, 5, 0.6, 30, 160, 0, alarm_high=110),
                _hr("pulse"),
            ),
            (Episode("hypertensive-crisis", {"sys": 60, "dia": 30}, 0.02, 3),),
            "Automatic blood-pressure cuff: systolic, diastolic, mean arterial pressure and pulse.",
        ),
        DeviceModel(
            "thermometer",
            60.0,
            130,
            (Channel("temp", "degC", 36.9, 0.3, 0.15, 0.95, 32, 43, 2, alarm_low=35.0, alarm_high=38.5),),
            (Episode("fever", {"temp": 2.2}, 0.005, 40),),
            "Wearable thermometer: core body temperature estimate.",
        ),
        DeviceModel(
            "infusion-pump",
            10.0,
            230,
            (Channel("pressure", "mmHg", 120, 20, 8, 0.7, 0, 1000, 0, alarm_high=500),),
            (Episode("occlusion", {"pressure": 650}, 0.002, 6),),
            "Volumetric infusion pump: status, rate, volume infused, line pressure; occlusion alarm.",
        ),
        DeviceModel(
            "ecg-patch",
            1.0,
            840,
            (_hr(),),
            (_TACHY,),
            "Single-lead ECG patch: 1 s of 250 Hz int16 samples (base64, little-endian, uV) per message.",
        ),
    )
}

ECG_HZ = 250
_PUMP_RATES = np.array([5.0, 10.0, 20.0, 25.0, 50.0, 75.0, 100.0, 125.0, 250.0])


def topic(site: str, model: str, device_id: str, kind: str) -> str:
    """The MQTT topic a device publishes ``kind`` ("telemetry" or "alarm") on."""
    return f"fleet/{site}/{model}/{device_id}/{kind}"


@dataclass(frozen=True)
class Message:
    """One publish: ``kind`` is "telemetry" or "alarm" (alarms go at the higher QoS)."""

    kind: str
    payload: bytes
    t: float
    seq: int


@dataclass(frozen=True, slots=True)
class Trace:
    """What a received payload says about its publish: the device, its sequence number, when it was published."""

    device: str
    seq: int
    ts_ns: int


# The head of every payload next_message writes, in its order: read without decoding the whole JSON (an ECG
# message is ~850 bytes, and a subscriber of the whole fleet reads thousands a second).
_HEAD = re.compile(rb'\{"id":"([^"\\]*)","model":"[^"\\]*","seq":(\d+),"t":[-0-9.eE+]+,"ts_ns":(\d+)[,}]')


def trace(payload: bytes) -> Trace | None:
    """The device, seq and publish time a payload carries, or None when it carries none (not fleetsim's)."""
    m = _HEAD.match(payload)
    if m is not None:
        return Trace(m.group(1).decode(), int(m.group(2)), int(m.group(3)))
    try:  # another field order or spacing: decode it all
        doc = json.loads(payload)
        device, seq, ts_ns = doc["id"], doc["seq"], doc["ts_ns"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(device, str) or type(seq) is not int or type(ts_ns) is not int:
        return None
    return Trace(device, seq, ts_ns)


_PAD_FIELD = b',"pad":""}'  # what a "pad" field costs, its value empty


def _padded(payload: bytes, size: int) -> bytes:
    """``payload`` (a JSON object) with a last field ``"pad"`` making it at least ``size`` bytes; as it is when
    it already is, or ``size`` is 0."""
    if size <= len(payload):
        return payload
    fill = max(0, size - len(payload) - len(_PAD_FIELD) + 1)  # the "}" it replaces
    return payload[:-1] + b',"pad":"' + b"x" * fill + b'"}'


def _ecg_template() -> np.ndarray:
    """One heartbeat (PQRST as Gaussians), 512 points over the phase 0..1, in microvolts."""
    x = np.linspace(0.0, 1.0, 512, endpoint=False)
    waves = (
        (0.2, 0.025, 120),
        (0.34, 0.008, -150),
        (0.36, 0.010, 1100),
        (0.38, 0.008, -250),
        (0.6, 0.04, 300),
    )
    return sum((a * np.exp(-((x - c) ** 2) / (2 * w * w)) for c, w, a in waves), np.zeros_like(x))


_ECG = _ecg_template()


@dataclass(slots=True)
class _Pump:
    rate: float  # ml/h
    vtbi: float  # volume to be infused, ml
    infused: float = 0.0
    status: str = "running"


@dataclass(frozen=True, slots=True)
class _Params:
    """A model's per-channel constants as arrays, shared by every device of that model."""

    sd: np.ndarray
    phi: np.ndarray
    innov: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    shifts: tuple[np.ndarray, ...]  # mean shift of each of the model's episodes


def _params(model: DeviceModel) -> _Params:
    chans = model.channels
    names = [c.name for c in chans]
    sd, phi = np.array([c.sd for c in chans]), np.array([c.phi for c in chans])
    shifts = []
    for ep in model.episodes:
        shift = np.zeros(len(chans))
        for name, amount in ep.shift.items():
            shift[names.index(name)] = amount
        shifts.append(shift)
    return _Params(sd, phi, sd * np.sqrt(1 - phi**2), np.array([c.low for c in chans]),
                   np.array([c.high for c in chans]), tuple(shifts))


_PARAMS = {name: _params(m) for name, m in MODELS.items()}
_NO_ALARM: frozenset[str] = frozenset()  # shared: a fresh empty frozenset per message would cost ~200 B/device
_INIT_COUNTER = 1 << 192  # Philox counter of the draws that set a device up; messages use seq << 64


class TelemetryStream:
    """The messages of one device, reproducible from (seed, device_id).

    Small on purpose (a fleet holds one per connected device): no random generator is kept. Philox is a
    counter-based generator, so message ``seq`` draws its noise from key (seed, device) at counter seq << 64,
    built on demand (~10 us); what persists per device is its baselines, its AR(1) state and a few scalars.
    """

    __slots__ = ("_active", "_base", "_ecg_phase", "_episode", "_episode_left", "_glucose_prev", "_key",
                 "_last_t", "_pump", "_seq", "_x", "device_id", "interval", "model", "model_name", "pad_to", "phase",
                 "seed")

    def __init__(self, model_name: str, device_id: str, seed: int, pad_to: int = 0) -> None:
        if model_name not in MODELS:
            raise ValueError(f"unknown device model {model_name!r} (choose one of: {', '.join(MODELS)})")
        self.model_name, self.device_id, self.seed, self.pad_to = model_name, device_id, seed, pad_to
        self.model = MODELS[model_name]
        self.interval = self.model.interval
        self._key = (seed % (1 << 64)) << 64 | zlib.crc32(device_id.encode())
        rng = self._rng(_INIT_COUNTER)
        chans = self.model.channels
        p = _PARAMS[model_name]
        base = np.array([c.mean + c.spread * rng.standard_normal() for c in chans])
        self._base = np.clip(base, p.lo, p.hi)
        self._x = self._base + p.sd * rng.standard_normal(len(chans))
        self._episode = -1  # index of the running episode, -1 for none
        self._episode_left = 0
        self._seq = 0
        self._last_t: float | None = None
        self._active: frozenset[str] = _NO_ALARM
        self._glucose_prev: float | None = None
        self.phase = float(rng.uniform(0.0, self.interval))  # s before the first publish: spreads devices
        rate, vtbi = float(rng.choice(_PUMP_RATES)), float(rng.choice([100.0, 250.0, 500.0, 1000.0]))
        self._pump = _Pump(rate, vtbi) if model_name == "infusion-pump" else None
        self._ecg_phase = float(rng.random())

    def _rng(self, counter: int) -> np.random.Generator:
        return np.random.Generator(np.random.Philox(counter=counter, key=self._key))

    def next_message(self, t: float, ts_ns: int | None = None) -> Message:
        """The device's next publish at run time ``t`` (s): a telemetry sample, or an alarm if one starts now.
        ``ts_ns``: the wall clock of the publish (``time.time_ns()``), written as the payload's ``ts_ns``; left
        out, the payload has none (and is reproducible byte for byte)."""
        dt = 0.0 if self._last_t is None else max(t - self._last_t, 0.0)
        self._last_t = t
        rng = self._rng(self._seq << 64)
        values = self._step(rng)
        extra = self._extras(values, dt, rng)
        codes = self._alarms(values)
        new = codes - self._active
        self._active = codes
        doc: dict[str, object] = {"id": self.device_id, "model": self.model_name, "seq": self._seq, "t": round(t, 3)}
        if ts_ns is not None:
            doc["ts_ns"] = ts_ns
        doc["values"], doc["unit"] = values, self.model.unit
        doc.update(extra)
        kind = "telemetry"
        if new:
            kind = "alarm"
            doc["alarm"] = {"codes": sorted(new), "active": sorted(codes)}
        msg = Message(kind, _padded(json.dumps(doc, separators=(",", ":")).encode(), self.pad_to), t, self._seq)
        self._seq += 1
        return msg

    def _step(self, rng: np.random.Generator) -> dict[str, float]:
        """Advance every channel one AR(1) step around its (episode-shifted) baseline."""
        p = _PARAMS[self.model_name]
        eps = rng.standard_normal(len(self._base))
        self._advance_episode(float(rng.random()))
        mu = self._base + p.shifts[self._episode] if self._episode >= 0 else self._base
        self._x = np.clip(mu + p.phi * (self._x - mu) + p.innov * eps, p.lo, p.hi)
        out: dict[str, float] = {}
        for c, v in zip(self.model.channels, self._x.tolist(), strict=True):
            out[c.name] = round(v, c.decimals) if c.decimals else round(v)
        return out

    def _advance_episode(self, coin: float) -> None:
        if self._episode_left > 0:
            self._episode_left -= 1
            if self._episode_left == 0:
                self._episode = -1
            return
        for i, ep in enumerate(self.model.episodes):
            if coin < ep.onset:
                self._episode, self._episode_left = i, ep.length
                return
            coin -= ep.onset

    def _alarms(self, values: dict[str, float]) -> frozenset[str]:
        codes = set()
        for c in self.model.channels:
            v = values[c.name]
            if v < c.alarm_low:
                codes.add(f"{c.name}-low")
            elif v > c.alarm_high:
                codes.add(f"{c.name}-high")
        if self.model_name == "infusion-pump":
            if "pressure-high" in codes:
                codes.discard("pressure-high")
                codes.add("occlusion")
            if self._pump is not None and self._pump.status == "complete":
                codes.add("infusion-complete")
        return frozenset(codes) if codes else _NO_ALARM

    def _extras(self, values: dict[str, float], dt: float, rng: np.random.Generator) -> dict[str, object]:
        """Model-specific fields beyond the AR(1) channels."""
        name = self.model_name
        if name == "glucose-monitor":
            return {"trend": self._trend(values["glucose"], dt)}
        if name == "bp-cuff":
            values["map"] = round(values["dia"] + (values["sys"] - values["dia"]) / 3)
            return {"unit": {**self.model.unit, "map": "mmHg"}}
        if name == "infusion-pump":
            return self._pump_fields(values, dt)
        if name == "ecg-patch":
            return self._ecg_fields(float(values["hr"]), rng)
        return {}

    def _trend(self, glucose: float, dt: float) -> dict[str, object]:
        prev = glucose if self._glucose_prev is None else self._glucose_prev
        self._glucose_prev = glucose
        rate = (glucose - prev) / (dt / 60.0) if dt > 0 else 0.0
        arrow = ("falling-fast" if rate < -2 else "falling" if rate < -1 else "flat" if rate <= 1
                 else "rising" if rate <= 2 else "rising-fast")  # fmt: skip
        return {"rate": round(rate, 1), "unit": "mg/dL/min", "arrow": arrow}

    def _pump_fields(self, values: dict[str, float], dt: float) -> dict[str, object]:
        pump = self._pump
        assert pump is not None
        occluded = values["pressure"] > MODELS["infusion-pump"].channels[0].alarm_high
        if pump.status != "complete":
            if not occluded:
                pump.infused = min(pump.vtbi, pump.infused + pump.rate * dt / 3600.0)
            pump.status = "complete" if pump.infused >= pump.vtbi else "occluded" if occluded else "running"
        values["rate"] = pump.rate if pump.status == "running" else 0.0
        values["infused"] = round(pump.infused, 2)
        values["vtbi"] = pump.vtbi
        return {
            "status": pump.status,
            "unit": {**self.model.unit, "rate": "ml/h", "infused": "ml", "vtbi": "ml"},
        }

    def _ecg_fields(self, hr: float, rng: np.random.Generator) -> dict[str, object]:
        beats = self._ecg_phase + np.arange(ECG_HZ) * (hr / 60.0 / ECG_HZ)
        self._ecg_phase = float((self._ecg_phase + hr / 60.0) % 1.0)
        idx = ((beats % 1.0) * len(_ECG)).astype(np.intp)
        uv = _ECG[idx] + 20.0 * rng.standard_normal(ECG_HZ)
        raw = np.clip(uv, -32768, 32767).astype("<i2").tobytes()
        return {
            "ecg": {
                "hz": ECG_HZ,
                "format": "int16le-base64",
                "unit": "uV",
                "data": base64.b64encode(raw).decode(),
            }
        }
