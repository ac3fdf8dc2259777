"""Google Cloud TPU v2 connector (``provider = "tpu"``): v4-8 and v5litepod-8 nodes through
long-running Operations, spot capacity through queued resources, prices from a catalogue.
See ``connector.py`` for the flow and ``catalog.py`` for prices and the pool options."""

from .catalog import CATALOG, AcceleratorInfo, TpuOptions
from .connector import TpuConnector

__all__ = ["CATALOG", "AcceleratorInfo", "TpuConnector", "TpuOptions"]
