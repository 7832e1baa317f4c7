"""The pace of the kinds' drivers, shared by every driver whatever pool runs its tasks (no Dask here)."""

WAKE_S = 0.2  # a driver looks at its tasks, its events and the cancel this often
HEARTBEAT_S = 5.0  # progress that did not move is reported this often, with the time gone on
CANCEL_WAIT_S = 60.0  # how long a cancel waits for running tasks to stop at their next step
