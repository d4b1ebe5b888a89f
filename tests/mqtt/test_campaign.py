"""The abuse campaign (scripts/mqtt_campaign.py) in a small configuration: every bad input survived,
every injected fault survived, no question lost, no secret printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mqtt_campaign.py"

pytestmark = pytest.mark.broker


@pytest.mark.timeout(120)
def test_small_campaign_survives_everything(mosquitto_bin, tmp_path):
    out = tmp_path / "campaign.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--flood", "60", "--restarts", "1", "--deadline-s", "40",
                           "--out", str(out)], capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["broker"] == "mosquitto"
    assert report["bad_inputs_tried"] >= 60
    assert report["not_survived"] == [], report["not_survived"]
    assert report["bad_inputs_survived"] == report["bad_inputs_tried"]
    assert report["faults_injected"] >= 7 and report["faults_survived"] == report["faults_injected"]
    assert report["questions_lost"] == 0
    assert report["secrets_printed"] == 0 and report["log_records"] > 0 and report["messages_seen"] > 0
