"""Raw events in, clean events out: the event schema's reader, Great Expectations validation with
quarantine, the day-partitioned lake, labels, the live event log and stream replay.
"""
