#!/usr/bin/env python
"""Attack the MQTT query service the way its environment will, and report what it survived (JSON).

    python scripts/mqtt_campaign.py --out results/mqtt_campaign.json            # full campaign, ~1-2 min
    python scripts/mqtt_campaign.py --flood 200 --restarts 1 --out /tmp/c.json  # small (the test suite's)

Loopback only, bounded in count (``--flood``, ``--restarts``) and time (``--deadline-s``). It starts its own
broker on a free port (mosquitto with persistence and an ACL; amqtt, MQTT 3.1.1 only, when mosquitto is
missing) and runs the real :class:`MqttQueryServer` in this process on a fake session (answers
``"answer: <question>"`` at once; ``boom`` raises, ``hang`` never returns). Then:

* every bad input (malformed / oversize / non-JSON payloads, lone surrogates, control characters and
  non-characters in routes, wildcards, confinement violations, floods) is sent once; it *survived* when
  the expected error reply (or the counted drop) happened, the server kept its connection, nothing
  was published on the bad route, and a probe question right after it was answered;
* faults are injected (broker restarts under a question flood, a slow consumer, a second client with
  the server's client id, a reply the broker rejects, a failing and a hanging session, the broker
  down at start); a fault *survived* when the service answers again afterwards and, for the flood,
  no question was lost (every question the broker acknowledged got a final reply: an answer, ``busy``
  or ``rate_limited``);
* every log record and every message seen on the broker is searched for the broker password.

Report: ``bad_inputs_tried/survived``, ``faults_injected/survived``, ``questions_lost``,
``secrets_printed``, and the per-item details.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from mqtt_campaign_attacks import (
    bad_inputs,
    fault_broker_down_at_start,
    fault_duplicate_server_id,
    fault_rejected_reply,
    fault_restarts_under_flood,
    fault_session_failures,
    fault_slow_consumer,
    floods,
    try_bad_input,
)
from mqtt_campaign_harness import BROKER_MAX_QUEUED, SERVER_USER, Broker, Harness, client, running

from omnizip_stream.query.mqtt import MqttConfig


async def campaign(args: argparse.Namespace, records: list[str]) -> dict[str, Any]:
    import tempfile

    t0 = time.monotonic()
    password = "pw-" + secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="omnizip-campaign-") as tmp:
        broker = Broker(Path(tmp), args.broker)
        h = Harness(broker, password, uuid.uuid4().hex[:6])
        bad: list[dict[str, Any]] = []
        faults: list[dict[str, Any]] = []
        async with running(broker):
            async with client(broker) as sniffer, client(broker, v5=False) as raw3, client(broker) as raw5:
                await sniffer.subscribe("#", qos=1)
                listener = asyncio.ensure_future(h.listen(sniffer))
                await h.start_server()
                for seq, item in enumerate(bad_inputs(h)):
                    if time.monotonic() - t0 > args.deadline_s:
                        break
                    result = await try_bad_input(h, item, raw5 if broker.v5 else None, raw3, seq)
                    bad.append(result)
                    progress(result)
                    if not h.alive or not result["probe_answered"]:
                        await h.start_server()  # measure the next input on a working server
                progress({"name": "floods"})
                bad += await floods(h, args.flood, raw5, raw3)
                for fault in await fault_session_failures(h):
                    faults.append(fault)
                    progress(fault)
                for run_fault in (fault_rejected_reply, lambda h: fault_slow_consumer(h, args.flood),
                                  fault_duplicate_server_id):
                    if not h.alive:
                        await h.start_server()
                    faults.append(await run_fault(h))
                    progress(faults[-1])
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
            if not h.alive:
                await h.start_server()
            faults.append(await fault_restarts_under_flood(h, args.flood, args.restarts))
            progress(faults[-1])
            faults.append(await fault_broker_down_at_start(h))
            progress(faults[-1])
            await h.stop_server()
        seen_text = "".join(t + body.decode("utf-8", "replace") for t, body in h.seen)
    try:  # an error about a broker URL carrying the password
        MqttConfig.from_url(f"mqtt://{SERVER_USER}:{password}@127.0.0.1:1/a/path", stream_id="x")
    except ValueError as exc:
        records.append(str(exc))
    records.append(json.dumps(h.config().redacted()))
    secrets_printed = sum(text.count(password) for text in records) + seen_text.count(password)
    injected = [f for f in faults if f.get("injected")]
    return {
        "broker": broker.kind,
        "bad_inputs_tried": len(bad), "bad_inputs_survived": sum(b["survived"] for b in bad),
        "faults_injected": sum(f["injected"] for f in injected),
        "faults_survived": sum(f["injected"] for f in injected if f["survived"]),
        "questions_lost": sum(f.get("questions_lost", 0) for f in faults),
        "secrets_printed": secrets_printed,
        "server_stop_hangs": h.server_stop_hangs,
        "log_records": len(records), "messages_seen": len(h.seen),
        "wall_s": round(time.monotonic() - t0, 1),
        "not_survived": [b["name"] for b in bad if not b["survived"]] + [f["name"] for f in injected
                                                                         if not f["survived"]],
        "bad_inputs": bad, "faults": faults,
        "settings": {"flood": args.flood, "restarts": args.restarts, "deadline_s": args.deadline_s,
                     "broker_max_queued_messages": BROKER_MAX_QUEUED if broker.kind == "mosquitto" else None},
    }


def progress(item: dict[str, Any]) -> None:
    """One line per finished item on stderr (the campaign is long; the JSON has the details)."""
    mark = {True: "ok  ", False: "FAIL", None: "... "}[item.get("survived")]
    print(f"{mark} {item['name']}", file=sys.stderr, flush=True)


class _Capture(logging.Handler):
    def __init__(self, records: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flood", type=int, default=2000, help="questions per flood and per restart flood (default 2000)")
    p.add_argument("--restarts", type=int, default=3, help="broker restarts during the flood (default 3)")
    p.add_argument("--broker", choices=("mosquitto", "amqtt"), default="mosquitto",
                   help="broker to start (mosquitto falls back to amqtt when it is not installed)")
    p.add_argument("--deadline-s", type=float, default=300.0, help="stop trying bad inputs after this long")
    p.add_argument("--out", type=Path, default=Path("results/mqtt_campaign.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.flood <= 20_000 or not 0 <= args.restarts <= 10:
        print("error: --flood must be in 1..20000 and --restarts in 0..10", file=sys.stderr)
        return 2
    records: list[str] = []
    capture = _Capture(records)
    capture.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.ERROR)  # the campaign provokes many warnings on purpose
    root = logging.getLogger()
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    report = asyncio.run(campaign(args, records))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: report[k] for k in ("broker", "bad_inputs_tried", "bad_inputs_survived", "faults_injected",
                                      "faults_survived", "questions_lost", "secrets_printed", "wall_s",
                                      "not_survived")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
