"""The built-in plant simulator: centrifugal pumps with coupled channels, injected faults and ground truth.

    plant = Plant(["pump-1", "pump-2"], seed=7, sample_period_s=1.0,
                  faults=FaultSchedule.generate(["pump-1", "pump-2"], duration_s=3600, seed=7))
    write_csv(plant.samples(start_ts, 3600), "data/")          # or publish_mqtt / write_serial
    write_ground_truth("truth.jsonl", plant.faults, plant.origin_ts)

numpy, paho-mqtt and pyserial only (no torch): it ships with the gateway for commissioning.
"""

from edge_agent.simulator.faults import (
    CHANNELS,
    FAULT_KINDS,
    UNITS,
    Fault,
    FaultSchedule,
    read_ground_truth,
    write_ground_truth,
)
from edge_agent.simulator.outputs import (
    MqttTarget,
    Pacer,
    format_line,
    publish_mqtt,
    write_csv,
    write_serial,
)
from edge_agent.simulator.plant import Plant, PumpSpec, Sample

__all__ = [
    "CHANNELS",
    "FAULT_KINDS",
    "UNITS",
    "Fault",
    "FaultSchedule",
    "MqttTarget",
    "Pacer",
    "Plant",
    "PumpSpec",
    "Sample",
    "format_line",
    "publish_mqtt",
    "read_ground_truth",
    "write_csv",
    "write_ground_truth",
    "write_serial",
]
