"""Vast.ai: GPU offers from a marketplace, rented on demand or as interruptible bids.

``wire`` is the pure half (search language, rent body, instance phases, error envelope);
``connector`` sends. Importing the package registers the ``vastai`` connector.
"""

from homeskillet.providers.vastai.connector import VastConnector
from homeskillet.providers.vastai.wire import VAST_URL

__all__ = ["VAST_URL", "VastConnector"]
