"""Story tests and properties of the pure state machine (keystate.processors.state_machine)."""
