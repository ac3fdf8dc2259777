"""RunPod: GPU pods over GraphQL, on demand or spot (a bid per GPU).

``wire`` is the pure half (documents, answers, offers, error mapping); ``connector`` sends.
Importing the package registers the ``runpod`` connector.
"""

from homeskillet.providers.runpod.connector import RunPodConnector
from homeskillet.providers.runpod.wire import RUNPOD_URL

__all__ = ["RUNPOD_URL", "RunPodConnector"]
