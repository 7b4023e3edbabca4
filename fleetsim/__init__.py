"""fleetsim: simulate fleets of mutual-TLS MQTT e-health devices and measure what certificates cost a broker."""

__version__ = "0.1.0"
