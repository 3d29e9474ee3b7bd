"""Clinical notes: write, amend, void and read, every read through the gate."""
