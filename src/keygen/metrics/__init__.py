"""The instance's figures: counted cheaply per worker, added up across workers when read.

``counters.py`` is what the hot path writes (shared memory, a file per worker); ``instance.py``
adds every worker's counters and published states into one view; ``prometheus.py`` renders
that view for Prometheus. ``layout.py`` fixes where each counter lives and its labels.
"""

from keygen.metrics.counters import Counters
from keygen.metrics.instance import InstanceView, instance_view, publish
from keygen.metrics.prometheus import registry_of

__all__ = ["Counters", "InstanceView", "instance_view", "publish", "registry_of"]
