import os

# Tests run on the CPU, whatever the machine has; keep XLA from grabbing all cores' memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
