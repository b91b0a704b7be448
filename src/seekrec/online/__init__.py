"""Online stage: the durable event log that feeds the online trainer, and its backends."""
