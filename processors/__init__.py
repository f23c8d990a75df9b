"""Partition processors: state machine, tables, invoker, timers."""
