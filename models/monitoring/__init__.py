"""After serving: the serving log, the A/B readout, drift and coverage."""
