"""The TVM backend: lowering to Relax, target registry, schedules, build."""
