"""The mqtt process: the box on the fleet's MQTT broker, for dashboards (Home Assistant) and staff.

- ``link.py``: the connection (TLS, credentials, last will), reconnecting with the box's jitter;
- ``topics.py``: the box's topics; ``state.py``: the ``state`` document from the bus;
- ``discovery.py``: Home Assistant's device discovery;
- ``remote.py``: ``config/set`` and ``command``, applied by control as the HTTP API's own;
- ``fleet.py``: the fleet's budget of new sessions, for the session;
- ``service.py``: the lifecycle. docs/fleet.md tells how the pieces fit.
"""

from services.mqtt.service import MqttService

SERVICE = MqttService

__all__ = ["SERVICE", "MqttService"]
