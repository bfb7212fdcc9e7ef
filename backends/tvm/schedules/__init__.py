"""Default schedules per target family."""
