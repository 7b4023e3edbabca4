"""Telemetry generators: reproducible, plausible, alarming at the thresholds, small and fast."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest

from fleetsim.telemetry import MODELS, TelemetryStream, topic

NAMES = ("heart-rate-monitor", "pulse-oximeter", "glucose-monitor", "bp-cuff", "thermometer", "infusion-pump",
         "ecg-patch")  # fmt: skip
RANGES = {
    "hr": (25, 220), "pulse": (25, 220), "rr": (270, 2400), "spo2": (60, 100), "pi": (0.2, 20),
    "glucose": (40, 400), "sys": (60, 260), "dia": (30, 160), "map": (40, 200), "temp": (32, 43),
    "pressure": (0, 1000), "rate": (0, 250), "infused": (0, 1000), "vtbi": (100, 1000),
}  # fmt: skip


def run(model: str, device: str = "dev-1", seed: int = 1, n: int = 200) -> list[dict]:
    stream = TelemetryStream(model, device, seed)
    return [json.loads(stream.next_message(i * stream.interval).payload) for i in range(n)]


def test_models_and_topic() -> None:
    assert set(MODELS) == set(NAMES)
    assert topic("ward-a", "bp-cuff", "dev-7", "alarm") == "fleet/ward-a/bp-cuff/dev-7/alarm"
    with pytest.raises(ValueError, match="unknown device model"):
        TelemetryStream("toaster", "d", 1)


def test_total_rate_of_a_5000_device_hospital_is_sane() -> None:
    mix = {"heart-rate-monitor": 1500, "pulse-oximeter": 1200, "thermometer": 800, "infusion-pump": 600,
           "glucose-monitor": 500, "bp-cuff": 350, "ecg-patch": 50}  # fmt: skip
    rate = sum(n / MODELS[m].interval for m, n in mix.items())
    assert rate < 2000


@pytest.mark.parametrize("model", NAMES)
def test_reproducible_per_seed_and_device(model: str) -> None:
    a, b = TelemetryStream(model, "dev-1", 5), TelemetryStream(model, "dev-1", 5)
    first = [a.next_message(i * 1.0).payload for i in range(100)]
    assert first == [b.next_message(i * 1.0).payload for i in range(100)]
    assert a.phase == b.phase and 0 <= a.phase < a.interval
    other_seed = TelemetryStream(model, "dev-1", 6)
    other_dev = TelemetryStream(model, "dev-2", 5)
    assert first != [other_seed.next_message(i * 1.0).payload for i in range(100)]
    assert first != [other_dev.next_message(i * 1.0).payload for i in range(100)]


@pytest.mark.parametrize("model", NAMES)
def test_payload_fields_and_plausible_ranges(model: str) -> None:
    for device in ("dev-1", "dev-2", "dev-3"):
        docs = run(model, device)
        assert [d["seq"] for d in docs] == list(range(len(docs)))
        for d in docs:
            assert d["id"] == device and d["model"] == model and isinstance(d["t"], float | int)
            assert set(d["values"]) <= set(d["unit"])
            for name, value in d["values"].items():
                low, high = RANGES[name]
                assert low <= value <= high, (name, value)


@pytest.mark.parametrize("model", NAMES)
def test_payload_sizes(model: str) -> None:
    sizes = [len(TelemetryStream(model, f"dev-{i:05d}", 1).next_message(1.0).payload) for i in range(50)]
    expected = MODELS[model].payload_bytes
    assert 0.6 * expected < float(np.mean(sizes)) < 1.4 * expected
    assert max(sizes) < 1200


def test_ecg_batch_is_one_second_of_int16() -> None:
    doc = run("ecg-patch", n=1)[0]
    ecg = doc["ecg"]
    samples = np.frombuffer(base64.b64decode(ecg["data"]), dtype="<i2")
    assert ecg["hz"] == 250 and len(samples) == 250
    assert samples.max() > 600  # an R wave in every second of a beating heart
    assert 600 < len(json.dumps(doc)) < 1100


def test_alarms_fire_exactly_when_thresholds_are_crossed() -> None:
    seen: set[str] = set()
    for model in NAMES:
        limits = MODELS[model].thresholds
        for device in range(40):
            stream = TelemetryStream(model, f"dev-{device}", 4)  # a seed whose 40 devices show every code
            active: set[str] = set()
            for i in range(300):
                msg = stream.next_message(i * stream.interval)
                doc = json.loads(msg.payload)
                now = {
                    f"{k}-low" if v < limits[k][0] else f"{k}-high"
                    for k, v in doc["values"].items()
                    if k in limits and not limits[k][0] <= v <= limits[k][1]
                }
                if model == "infusion-pump":
                    now = {"occlusion" if c == "pressure-high" else c for c in now}
                    if doc["status"] == "complete":
                        now.add("infusion-complete")
                    assert (doc["status"] == "occluded") == ("occlusion" in now)
                assert (msg.kind == "alarm") == bool(now - active), (model, doc)
                if msg.kind == "alarm":
                    assert set(doc["alarm"]["codes"]) == now - active
                    seen |= set(doc["alarm"]["codes"])
                active = now
    assert {"hr-high", "hr-low", "spo2-low", "glucose-low", "glucose-high", "sys-high", "temp-high",
            "occlusion"} <= seen  # fmt: skip


def test_alarms_are_rare() -> None:
    for model in NAMES:
        kinds = [TelemetryStream(model, f"d{i}", 1).next_message(0.0).kind for i in range(300)]
        assert kinds.count("alarm") < 30, model


def test_generation_is_fast() -> None:
    streams = [TelemetryStream(m, f"dev-{i}", 1) for m in NAMES for i in range(30)]
    start = time.perf_counter()
    for k in range(20):
        for s in streams:
            s.next_message(float(k))
    per_message = (time.perf_counter() - start) / (20 * len(streams))
    assert per_message < 200e-6  # measured ~15 us (ECG ~35 us); generous for loaded CI machines


@pytest.mark.parametrize("model", NAMES)
def test_every_message_carries_its_device_seq_and_publish_time(model: str) -> None:
    from fleetsim.telemetry import trace

    stream = TelemetryStream(model, "ward-a-dev-7", 3)
    for seq in range(20):
        ts = time.time_ns()
        msg = stream.next_message(seq * 1.0, ts)
        doc = json.loads(msg.payload)
        assert (doc["id"], doc["seq"], doc["ts_ns"]) == ("ward-a-dev-7", seq, ts)
        found = trace(msg.payload)
        assert found is not None and (found.device, found.seq, found.ts_ns) == ("ward-a-dev-7", seq, ts)
    assert "ts_ns" not in json.loads(TelemetryStream(model, "d", 3).next_message(0.0).payload)  # reproducible


def test_trace_reads_any_field_order_and_refuses_what_is_not_fleetsims() -> None:
    from fleetsim.telemetry import trace

    other = json.dumps({"ts_ns": 5, "seq": 2, "id": "x", "values": {}}, indent=1).encode()
    assert trace(other) is not None and (trace(other).device, trace(other).seq) == ("x", 2)  # type: ignore[union-attr]
    for payload in (b"", b"hello", b"{}", b'{"id": "x", "seq": "2", "ts_ns": 1}', b'{"id": 1, "seq": 2, "ts_ns": 1}',
                    b'[1, 2]'):
        assert trace(payload) is None


@pytest.mark.parametrize("size", [0, 100, 171, 2000, 60_000])
def test_payload_size_is_configurable(size: int) -> None:
    stream = TelemetryStream("pulse-oximeter", "dev-1", 1, pad_to=size)
    natural = TelemetryStream("pulse-oximeter", "dev-1", 1)
    for i in range(10):
        msg, plain = stream.next_message(i * 5.0, 1), natural.next_message(i * 5.0, 1)
        doc = json.loads(msg.payload)
        if size <= len(plain.payload):
            assert msg.payload == plain.payload
        else:
            assert len(msg.payload) == max(size, len(plain.payload) + 9) and set(doc["pad"]) <= {"x"}
            assert {k: v for k, v in doc.items() if k != "pad"} == json.loads(plain.payload)
