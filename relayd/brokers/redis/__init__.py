"""The Redis broker: several relayd nodes share ids, sequence numbers, history and routing."""
