"""Fault injection over real processes: SIGKILL `reelay serve` at chosen points of jobs' lives."""
