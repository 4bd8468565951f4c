"""pitstop: repairs faulty nodes of FaaS clusters without disturbing their work."""

__version__ = "0.1.0"
